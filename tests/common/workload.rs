//! Replays the SQL Frappe v15 sends for each write path (shared/docs/frappe-write-paths.md
//! §3–§4): insert, save (parent UPDATE of every column, DELETE of removed children, UPDATE of
//! every kept child, INSERT of new ones), submit/cancel (save with docstatus, plus ledger rows
//! and status updates on other documents in the same transaction), amend, delete, rename,
//! db_set, Single save, nested-set updates. Each operation is one transaction.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Params, Value};

/// A Sales Invoice child row (any of the four child tables).
#[derive(Debug, Clone)]
pub struct Child {
    pub name: String,
    pub field: &'static str,
    pub cols: Vec<(&'static str, Value)>,
}

/// A Sales Invoice as Frappe would hold it in memory.
#[derive(Debug, Clone)]
pub struct Invoice {
    pub name: String,
    pub customer: String,
    pub docstatus: i64,
    pub status: String,
    pub grand_total: String,
    pub outstanding: String,
    pub remarks: Option<String>,
    pub amended_from: Option<String>,
    pub children: Vec<Child>,
}

fn child_table(field: &str) -> &'static str {
    match field {
        "items" => "tabSales Invoice Item",
        "taxes" => "tabSales Taxes and Charges",
        "payment_schedule" => "tabPayment Schedule",
        "sales_team" => "tabSales Team",
        _ => panic!("unknown table field {field}"),
    }
}

/// The four table fields of Sales Invoice, in field order.
pub const SI_FIELDS: [&str; 4] = ["items", "taxes", "payment_schedule", "sales_team"];

impl Invoice {
    /// A draft with `n_items` items, two taxes, one payment schedule row and one sales team row.
    pub fn draft(name: &str, customer: &str, n_items: usize) -> Invoice {
        let mut children = Vec::new();
        for i in 0..n_items {
            children.push(Child {
                name: format!("{name}-it{i}"),
                field: "items",
                cols: vec![
                    ("item_code", format!("ITEM-{i}").into()),
                    ("item_name", format!("Item {i} ✓").into()),
                    ("qty", format!("{}.000000000", i + 1).into()),
                    ("rate", "12.500000000".into()),
                    ("amount", format!("{}.500000000", (i + 1) * 12).into()),
                ],
            });
        }
        for (i, acc) in ["VAT - A", "Freight - A"].iter().enumerate() {
            children.push(Child {
                name: format!("{name}-tx{i}"),
                field: "taxes",
                cols: vec![
                    ("charge_type", "On Net Total".into()),
                    ("account_head", (*acc).into()),
                    ("rate", "5.000000000".into()),
                ],
            });
        }
        children.push(Child {
            name: format!("{name}-ps0"),
            field: "payment_schedule",
            cols: vec![
                ("due_date", "2024-07-01".into()),
                ("invoice_portion", "100.000000000".into()),
            ],
        });
        children.push(Child {
            name: format!("{name}-st0"),
            field: "sales_team",
            cols: vec![
                ("sales_person", "Alice".into()),
                ("allocated_percentage", "100.000000000".into()),
            ],
        });
        Invoice {
            name: name.into(),
            customer: customer.into(),
            docstatus: 0,
            status: "Draft".into(),
            grand_total: "1000.123456789".into(),
            outstanding: "1000.123456789".into(),
            remarks: Some("line one\nline \"two\" 😀".into()),
            amended_from: None,
            children,
        }
    }

    fn idx_of(&self, c: &Child) -> i64 {
        self.children
            .iter()
            .filter(|x| x.field == c.field)
            .position(|x| x.name == c.name)
            .map_or(0, |p| p as i64 + 1)
    }
}

/// A connection that replays Frappe's SQL, with a deterministic clock for `modified`.
pub struct Frappe {
    pub conn: Conn,
    tick: u64,
}

impl Frappe {
    pub fn new(conn: Conn) -> Frappe {
        Frappe { conn, tick: 0 }
    }

    /// The next `now()`: strictly increasing, with microseconds.
    pub fn now(&mut self) -> String {
        self.tick += 1;
        let s = self.tick;
        format!(
            "2024-06-01 {:02}:{:02}:{:02}.{:06}",
            (s / 3600) % 24,
            (s / 60) % 60,
            s % 60,
            (s * 7919) % 1_000_000
        )
    }

    async fn exec(&mut self, sql: &str, params: impl Into<Params> + Send) {
        self.conn
            .exec_drop(sql, params)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn begin(&mut self) {
        self.conn
            .query_drop("START TRANSACTION")
            .await
            .expect("begin");
    }

    async fn commit(&mut self) {
        self.conn.query_drop("COMMIT").await.expect("commit");
    }

    async fn version(&mut self, doctype: &str, name: &str, now: &str) {
        static VERSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let vname = format!(
            "v-{}-{}",
            std::process::id(),
            VERSIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        self.exec(
            "INSERT INTO `tabVersion` (name, creation, modified, modified_by, owner, ref_doctype, docname, data) VALUES (?,?,?,?,?,?,?,?)",
            (vname, now, now, "Administrator", "Administrator", doctype, name, "{\"changed\": []}"),
        )
        .await;
    }

    async fn insert_child(&mut self, inv: &Invoice, c: &Child, now: &str) {
        let table = child_table(c.field);
        let mut cols = vec![
            "name",
            "creation",
            "modified",
            "modified_by",
            "owner",
            "docstatus",
            "idx",
            "parent",
            "parentfield",
            "parenttype",
        ];
        let mut vals: Vec<Value> = vec![
            c.name.clone().into(),
            now.into(),
            now.into(),
            "Administrator".into(),
            "Administrator".into(),
            inv.docstatus.into(),
            inv.idx_of(c).into(),
            inv.name.clone().into(),
            c.field.into(),
            "Sales Invoice".into(),
        ];
        for (k, v) in &c.cols {
            cols.push(k);
            vals.push(v.clone());
        }
        let sql = format!(
            "INSERT INTO `{table}` ({}) VALUES ({})",
            cols.iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(","),
            vec!["?"; cols.len()].join(",")
        );
        self.exec(&sql, vals).await;
    }

    async fn update_child(&mut self, inv: &Invoice, c: &Child, now: &str) {
        let table = child_table(c.field);
        let mut sets = vec![
            "`modified`=?".to_string(),
            "`modified_by`=?".into(),
            "`docstatus`=?".into(),
            "`idx`=?".into(),
        ];
        let mut vals: Vec<Value> = vec![
            now.into(),
            "Administrator".into(),
            inv.docstatus.into(),
            inv.idx_of(c).into(),
        ];
        for (k, v) in &c.cols {
            sets.push(format!("`{k}`=?"));
            vals.push(v.clone());
        }
        vals.push(c.name.clone().into());
        self.exec(
            &format!("UPDATE `{table}` SET {} WHERE `name`=?", sets.join(",")),
            vals,
        )
        .await;
    }

    async fn update_parent(&mut self, inv: &Invoice, now: &str) {
        self.exec(
            "UPDATE `tabSales Invoice` SET `modified`=?, `modified_by`=?, `docstatus`=?, `customer`=?, `customer_name`=?, `posting_date`=?, \
             `posting_time`=?, `due_date`=?, `currency`=?, `conversion_rate`=?, `grand_total`=?, `outstanding_amount`=?, `status`=?, \
             `remarks`=?, `amended_from`=? WHERE `name`=?",
            vec![
                Value::from(now), "Administrator".into(), inv.docstatus.into(), inv.customer.clone().into(), format!("{} Ltd", inv.customer).into(),
                "2024-06-01".into(), "10:20:30.123456".into(), "2024-07-01".into(), "INR".into(), "1.000000000".into(), inv.grand_total.clone().into(),
                inv.outstanding.clone().into(), inv.status.clone().into(), inv.remarks.clone().into(), inv.amended_from.clone().into(), inv.name.clone().into(),
            ],
        )
        .await;
    }

    /// `Document.insert` of a Sales Invoice (with its naming series and Version row).
    pub async fn insert_invoice(&mut self, inv: &Invoice) {
        let now = self.now();
        self.begin().await;
        self.exec("INSERT INTO `tabSeries` (name, current) VALUES ('ACC-SINV-2024-', 1) ON DUPLICATE KEY UPDATE current=current+1", ()).await;
        self.exec(
            "INSERT INTO `tabSales Invoice` (name, creation, modified, modified_by, owner, docstatus, idx, naming_series, customer, customer_name, \
             posting_date, posting_time, due_date, currency, conversion_rate, grand_total, outstanding_amount, status, remarks, amended_from) \
             VALUES (?,?,?,?,?,?,0,'ACC-SINV-.YYYY.-',?,?,?,?,?,?,?,?,?,?,?,?)",
            vec![
                Value::from(inv.name.clone()), now.clone().into(), now.clone().into(), "Administrator".into(), "Administrator".into(), inv.docstatus.into(),
                inv.customer.clone().into(), format!("{} Ltd", inv.customer).into(), "2024-06-01".into(), "10:20:30.123456".into(), "2024-07-01".into(),
                "INR".into(), "1.000000000".into(), inv.grand_total.clone().into(), inv.outstanding.clone().into(), inv.status.clone().into(),
                inv.remarks.clone().into(), inv.amended_from.clone().into(),
            ],
        )
        .await;
        for f in SI_FIELDS {
            for c in inv
                .children
                .iter()
                .filter(|c| c.field == f)
                .cloned()
                .collect::<Vec<_>>()
            {
                self.insert_child(inv, &c, &now).await;
            }
        }
        self.version("Sales Invoice", &inv.name, &now).await;
        self.commit().await;
    }

    async fn save_body(&mut self, inv: &Invoice, now: &str) {
        self.exec(
            "UPDATE `tabSales Invoice` SET `_seen`=? WHERE `name`=?",
            ("[\"Administrator\"]", inv.name.clone()),
        )
        .await;
        self.update_parent(inv, now).await;
        for f in SI_FIELDS {
            let keep: Vec<String> = inv
                .children
                .iter()
                .filter(|c| c.field == f)
                .map(|c| c.name.clone())
                .collect();
            let table = child_table(f);
            if keep.is_empty() {
                self.exec(
                    &format!(
                        "DELETE FROM `{table}` WHERE parent=? AND parenttype=? AND parentfield=?"
                    ),
                    (inv.name.clone(), "Sales Invoice", f),
                )
                .await;
            } else {
                let marks = vec!["?"; keep.len()].join(",");
                let mut p: Vec<Value> =
                    vec![inv.name.clone().into(), "Sales Invoice".into(), f.into()];
                p.extend(keep.iter().map(|k| Value::from(k.clone())));
                self.exec(&format!("DELETE FROM `{table}` WHERE parent=? AND parenttype=? AND parentfield=? AND name NOT IN ({marks})"), p).await;
            }
            for c in inv
                .children
                .iter()
                .filter(|c| c.field == f)
                .cloned()
                .collect::<Vec<_>>()
            {
                let exists: Option<String> = self
                    .conn
                    .exec_first(
                        format!("SELECT name FROM `{table}` WHERE name=?"),
                        (c.name.clone(),),
                    )
                    .await
                    .expect("select");
                if exists.is_some() {
                    self.update_child(inv, &c, now).await;
                } else {
                    self.insert_child(inv, &c, now).await;
                }
            }
        }
    }

    /// `Document.save`: every column of the parent, every child row rewritten.
    pub async fn save_invoice(&mut self, inv: &Invoice) {
        let now = self.now();
        self.begin().await;
        self.save_body(inv, &now).await;
        self.version("Sales Invoice", &inv.name, &now).await;
        self.commit().await;
    }

    /// Submit: a save with docstatus 1, then GL entries, the status updater on the Sales Order
    /// it bills (another document's child row and parent), and outstanding/status via set_value.
    pub async fn submit_invoice(&mut self, inv: &mut Invoice, sales_order: &str, so_item: &str) {
        inv.docstatus = 1;
        inv.status = "Unpaid".into();
        let now = self.now();
        self.begin().await;
        self.save_body(inv, &now).await;
        for (i, (acc, dr, cr)) in [
            ("Debtors - A", inv.grand_total.clone(), "0"),
            ("Sales - A", "0".to_string(), inv.grand_total.as_str()),
        ]
        .iter()
        .enumerate()
        {
            self.exec(
                "INSERT INTO `tabGL Entry` (name, creation, modified, modified_by, owner, docstatus, posting_date, account, debit, credit, voucher_type, voucher_no) VALUES (?,?,?,?,?,1,?,?,?,?,?,?)",
                vec![Value::from(format!("{}-gl{i}", inv.name)), now.clone().into(), now.clone().into(), "Administrator".into(), "Administrator".into(), "2024-06-01".into(), (*acc).into(), dr.clone().into(), (*cr).into(), "Sales Invoice".into(), inv.name.clone().into()],
            )
            .await;
        }
        self.exec("UPDATE `tabSales Order Item` SET billed_amt=?, modified=?, modified_by='Administrator' WHERE name=?", (inv.grand_total.clone(), now.clone(), so_item)).await;
        self.exec("UPDATE `tabSales Order` SET per_billed=100, billing_status='Fully Billed', status='To Deliver', modified=?, modified_by='Administrator' WHERE name=?", (now.clone(), sales_order)).await;
        let now2 = self.now();
        self.exec("UPDATE `tabSales Invoice` SET outstanding_amount=?, modified=?, modified_by='Administrator' WHERE name=?", (inv.outstanding.clone(), now2.clone(), inv.name.clone())).await;
        self.exec(
            "UPDATE `tabSales Invoice` SET status=? WHERE name=?",
            ("Unpaid", inv.name.clone()),
        )
        .await;
        self.version("Sales Invoice", &inv.name, &now).await;
        self.commit().await;
    }

    /// Cancel: docstatus 2 on parent and children, GL entries marked cancelled.
    pub async fn cancel_invoice(&mut self, inv: &mut Invoice) {
        inv.docstatus = 2;
        inv.status = "Cancelled".into();
        let now = self.now();
        self.begin().await;
        self.save_body(inv, &now).await;
        self.exec("UPDATE `tabGL Entry` SET is_cancelled=1, modified=? WHERE voucher_type='Sales Invoice' AND voucher_no=?", (now.clone(), inv.name.clone())).await;
        self.commit().await;
    }

    /// Delete: parent first, then children per child doctype, plus the Deleted Document noise.
    pub async fn delete_invoice(&mut self, inv: &Invoice) {
        self.begin().await;
        self.exec(
            "DELETE FROM `tabSales Invoice` WHERE name=?",
            (inv.name.clone(),),
        )
        .await;
        for f in SI_FIELDS {
            self.exec(
                &format!(
                    "DELETE FROM `{}` WHERE parenttype=? AND parent=?",
                    child_table(f)
                ),
                ("Sales Invoice", inv.name.clone()),
            )
            .await;
        }
        self.commit().await;
    }

    /// Inserts a customer with a Sales Team (the child table Sales Invoice also uses).
    pub async fn insert_customer(&mut self, name: &str, group: &str) {
        let now = self.now();
        self.begin().await;
        self.exec(
            "INSERT INTO `tabCustomer` (name, creation, modified, modified_by, owner, docstatus, idx, customer_name, customer_group, territory, credit_limit) VALUES (?,?,?,?,?,0,0,?,?,?,?)",
            (name, now.clone(), now.clone(), "Administrator", "Administrator", format!("{name} Ltd"), group, "India", "50000.000000000"),
        )
        .await;
        self.exec(
            "INSERT INTO `tabSales Team` (name, creation, modified, modified_by, owner, docstatus, idx, sales_person, allocated_percentage, parent, parentfield, parenttype) VALUES (?,?,?,?,?,0,1,?,?,?,?,?)",
            (format!("{name}-st0"), now.clone(), now.clone(), "Administrator", "Administrator", "Bob", "100.000000000", name, "sales_team", "Customer"),
        )
        .await;
        self.commit().await;
    }

    /// Inserts a Sales Order with one item.
    pub async fn insert_sales_order(&mut self, name: &str, customer: &str, item_row: &str) {
        let now = self.now();
        self.begin().await;
        self.exec(
            "INSERT INTO `tabSales Order` (name, creation, modified, modified_by, owner, docstatus, customer, transaction_date, grand_total, status) VALUES (?,?,?,?,?,1,?,?,?,?)",
            (name, now.clone(), now.clone(), "Administrator", "Administrator", customer, "2024-05-01", "1000.123456789", "To Deliver and Bill"),
        )
        .await;
        self.exec(
            "INSERT INTO `tabSales Order Item` (name, creation, modified, modified_by, owner, docstatus, idx, item_code, qty, rate, amount, parent, parentfield, parenttype) VALUES (?,?,?,?,?,1,1,?,?,?,?,?,?,?)",
            (item_row, now.clone(), now.clone(), "Administrator", "Administrator", "ITEM-0", "1.000000000", "1000.123456789", "1000.123456789", name, "items", "Sales Order"),
        )
        .await;
        self.commit().await;
    }

    /// `rename_doc` of a Customer: the key in the parent, `parent` of its children, and every
    /// link column pointing at it (without bumping `modified`).
    pub async fn rename_customer(&mut self, old: &str, new: &str) {
        self.begin().await;
        self.exec("UPDATE `tabCustomer` SET name=? WHERE name=?", (new, old))
            .await;
        self.exec(
            "UPDATE `tabSales Team` SET parent=? WHERE parent=? AND parenttype='Customer'",
            (new, old),
        )
        .await;
        self.exec(
            "UPDATE `tabSales Invoice` SET customer=? WHERE customer=?",
            (new, old),
        )
        .await;
        self.exec(
            "UPDATE `tabSales Order` SET customer=? WHERE customer=?",
            (new, old),
        )
        .await;
        self.exec(
            "UPDATE `tabVersion` SET docname=? WHERE ref_doctype='Customer' AND docname=?",
            (new, old),
        )
        .await;
        self.commit().await;
    }

    /// `doc.db_set(field, value)` on a parent row, with or without a `modified` bump.
    pub async fn db_set(
        &mut self,
        table: &str,
        name: &str,
        field: &str,
        value: Value,
        update_modified: bool,
    ) {
        let now = self.now();
        self.begin().await;
        if update_modified {
            self.exec(&format!("UPDATE `{table}` SET `{field}`=?, `modified`=?, `modified_by`='Administrator' WHERE `name`=?"), (value, now, name)).await;
        } else {
            self.exec(
                &format!("UPDATE `{table}` SET `{field}`=? WHERE `name`=?"),
                (value, name),
            )
            .await;
        }
        self.commit().await;
    }

    /// Saving a Single: every `tabSingles` row deleted and inserted again.
    pub async fn save_single(&mut self, doctype: &str, fields: &[(&str, &str)]) {
        let now = self.now();
        self.begin().await;
        self.exec("DELETE FROM `tabSingles` WHERE doctype=?", (doctype,))
            .await;
        let mut all: Vec<(String, String)> = fields
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        all.push(("name".into(), doctype.into()));
        all.push(("modified".into(), now));
        for (f, v) in all {
            self.exec(
                "INSERT INTO `tabSingles` (doctype, field, value) VALUES (?,?,?)",
                (doctype, f, v),
            )
            .await;
        }
        self.commit().await;
    }

    /// Adds a node under `parent` in the Customer Group tree: the nested-set shift of every
    /// row to the right, then the insert.
    pub async fn tree_insert(&mut self, name: &str, parent: &str) {
        let now = self.now();
        self.begin().await;
        let rgt: i64 = self
            .conn
            .exec_first(
                "SELECT rgt FROM `tabCustomer Group` WHERE name=?",
                (parent,),
            )
            .await
            .expect("rgt")
            .expect("parent exists");
        self.exec(
            "UPDATE `tabCustomer Group` SET rgt = rgt + 2 WHERE rgt >= ?",
            (rgt,),
        )
        .await;
        self.exec(
            "UPDATE `tabCustomer Group` SET lft = lft + 2 WHERE lft >= ?",
            (rgt,),
        )
        .await;
        self.exec(
            "INSERT INTO `tabCustomer Group` (name, creation, modified, modified_by, owner, customer_group_name, parent_customer_group, is_group, lft, rgt) VALUES (?,?,?,?,?,?,?,0,?,?)",
            (name, now.clone(), now, "Administrator", "Administrator", name, parent, rgt, rgt + 1),
        )
        .await;
        self.commit().await;
    }
}

/// Invoice churn until `stop` is set: inserts (named `{prefix}-{n}`, `items` item rows), saves
/// of a changed total and `db_set`s of remarks on earlier ones, `pause` apart; every
/// operation is one transaction and bumps `modified`, and is counted in `ops`.
pub async fn invoice_churn(
    mut f: Frappe,
    prefix: String,
    items: usize,
    pause: std::time::Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ops: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::Ordering;
    let mut n = 0u64;
    let mut live: Vec<Invoice> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        n += 1;
        match n % 4 {
            0 | 1 => {
                let inv = Invoice::draft(&format!("{prefix}-{n}"), "C1", items);
                f.insert_invoice(&inv).await;
                live.push(inv);
            }
            2 if !live.is_empty() => {
                let i = (n as usize * 7) % live.len();
                live[i].grand_total = format!("{n}.000000000");
                let inv = live[i].clone();
                f.save_invoice(&inv).await;
            }
            _ if !live.is_empty() => {
                let i = (n as usize * 13) % live.len();
                f.db_set(
                    "tabSales Invoice",
                    &live[i].name.clone(),
                    "remarks",
                    format!("r{n}").into(),
                    true,
                )
                .await;
            }
            _ => {}
        }
        ops.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(pause).await;
    }
}
