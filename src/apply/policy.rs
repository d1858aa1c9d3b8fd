//! Conflict policies: what apply does when the replica's copy of a document was changed
//! locally (the `[conflicts]` table of the `--config` file; pure, no I/O).
//!
//! ```toml
//! [conflicts]
//! default = "manual"            # every doctype without its own entry
//! detect = "changed_columns"    # or "row": any local difference is a conflict
//! [conflicts.doctype."Item Price"]
//! policy = "primary_wins"
//! [conflicts.doctype."Customer"]
//! policy = "merge_fields"
//! fallback = "newest_wins"      # when the two sides changed the same field
//! [conflicts.doctype."Sales Invoice"]
//! policy = "newest_wins"
//! delete_changed = "manual"     # overrides per case: update_missing, insert_exists, delete_changed
//! ```
//!
//! Every replica of a stream must run the same policies: each decision is a function of the
//! envelope and the replica's copy only (no clock, no randomness), so replicas that start
//! equal stay equal. Renames always wait for an operator (`manual`).
//!
//! Frappe guards, over every policy: `docstatus` never moves backwards (an automatic decision
//! that would write a draft over a submitted or cancelled copy, or delete a submitted copy,
//! is recorded for an operator instead), and a submitted document is never field-merged.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::image::Image;

/// What to do with a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Record it for an operator (`conflicts resolve`, the conflicts page); write nothing.
    Manual,
    /// Write the primary's version over the replica's copy.
    PrimaryWins,
    /// Keep the replica's copy.
    ReplicaWins,
    /// The side with the later `modified` wins; a tie goes to the primary.
    NewestWins,
    /// Apply the primary's changed fields when the replica changed other fields (child rows by
    /// name); when both changed the same field, the fallback decides.
    MergeFields,
}

impl Policy {
    pub fn label(self) -> &'static str {
        match self {
            Policy::Manual => "manual",
            Policy::PrimaryWins => "primary_wins",
            Policy::ReplicaWins => "replica_wins",
            Policy::NewestWins => "newest_wins",
            Policy::MergeFields => "merge_fields",
        }
    }

    /// Every label, for metrics initialised at 0.
    pub const ALL: [Policy; 5] = [
        Policy::Manual,
        Policy::PrimaryWins,
        Policy::ReplicaWins,
        Policy::NewestWins,
        Policy::MergeFields,
    ];
}

/// What is compared to find a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detect {
    /// Only what the primary changed must match the replica's copy (`merge.rs`).
    #[default]
    ChangedColumns,
    /// The replica's copy must equal the primary's `before` image (bookkeeping aside).
    Row,
}

/// The situations a conflict arises in (after Oracle GoldenGate's conflict types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// The primary creates (or snapshots) a document the replica holds with other content.
    InsertExists,
    /// The primary updates a document the replica does not have.
    UpdateMissing,
    /// The primary updates a document the replica changed.
    UpdateChanged,
    /// The primary deletes a document the replica changed.
    DeleteChanged,
    /// A rename that cannot apply (always manual).
    Rename,
}

/// The policy of one doctype (or the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoctypePolicy {
    #[serde(default = "manual")]
    pub policy: Policy,
    /// For `merge_fields` when both sides changed the same field (default `manual`).
    #[serde(default = "manual")]
    pub fallback: Policy,
    pub update_missing: Option<Policy>,
    pub insert_exists: Option<Policy>,
    pub delete_changed: Option<Policy>,
}

fn manual() -> Policy {
    Policy::Manual
}

impl Default for DoctypePolicy {
    fn default() -> Self {
        DoctypePolicy {
            policy: Policy::Manual,
            fallback: Policy::Manual,
            update_missing: None,
            insert_exists: None,
            delete_changed: None,
        }
    }
}

impl DoctypePolicy {
    /// The policy for `case` (its override, else the doctype's).
    pub fn for_case(&self, case: Case) -> Policy {
        match case {
            Case::InsertExists => self.insert_exists.unwrap_or(self.policy),
            Case::UpdateMissing => self.update_missing.unwrap_or(self.policy),
            Case::DeleteChanged => self.delete_changed.unwrap_or(self.policy),
            Case::UpdateChanged => self.policy,
            Case::Rename => Policy::Manual,
        }
    }
}

/// The `[conflicts]` table, checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policies {
    pub detect: Detect,
    /// The policy of doctypes without an entry.
    pub default: DoctypePolicy,
    pub doctype: BTreeMap<String, DoctypePolicy>,
}

/// `[conflicts]` as written: the default policy's fields at the top of the table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    detect: Option<Detect>,
    default: Option<Policy>,
    fallback: Option<Policy>,
    update_missing: Option<Policy>,
    insert_exists: Option<Policy>,
    delete_changed: Option<Policy>,
    #[serde(default)]
    doctype: BTreeMap<String, DoctypePolicy>,
}

impl Policies {
    /// Parses and checks the `[conflicts]` table of a config file (`text` is the whole file);
    /// defaults when it has none.
    pub fn from_config(text: &str) -> Result<Policies, String> {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            conflicts: Option<toml::Value>,
        }
        let f: File = toml::from_str(text).map_err(|e| e.message().to_string())?;
        let Some(v) = f.conflicts else {
            return Ok(Policies::default());
        };
        let r: Raw = v
            .try_into()
            .map_err(|e: toml::de::Error| format!("[conflicts]: {}", e.message()))?;
        let p = Policies {
            detect: r.detect.unwrap_or_default(),
            default: DoctypePolicy {
                policy: r.default.unwrap_or(Policy::Manual),
                fallback: r.fallback.unwrap_or(Policy::Manual),
                update_missing: r.update_missing,
                insert_exists: r.insert_exists,
                delete_changed: r.delete_changed,
            },
            doctype: r.doctype,
        };
        p.check()?;
        Ok(p)
    }

    /// The policies of the config file at `path` (defaults without one).
    pub fn load(path: Option<&std::path::Path>) -> Result<Policies, String> {
        let Some(path) = path else {
            return Ok(Policies::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        Policies::from_config(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    fn check(&self) -> Result<(), String> {
        let entries = std::iter::once(("(default)", self.default))
            .chain(self.doctype.iter().map(|(k, v)| (k.as_str(), *v)));
        for (dt, p) in entries {
            if p.fallback == Policy::MergeFields {
                return Err(format!(
                    "[conflicts] {dt}: fallback = \"merge_fields\" is not allowed (it is what falls back)"
                ));
            }
            for (case, o) in [
                ("update_missing", p.update_missing),
                ("insert_exists", p.insert_exists),
            ] {
                if o == Some(Policy::MergeFields) {
                    return Err(format!(
                        "[conflicts] {dt}: {case} = \"merge_fields\" cannot merge (one side has no copy)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The policy of `doctype`.
    pub fn of(&self, doctype: &str) -> DoctypePolicy {
        self.doctype.get(doctype).copied().unwrap_or(self.default)
    }

    /// A line per doctype for the start-up log (no row values).
    pub fn summary(&self) -> String {
        let mut s = format!(
            "detect={:?} default={}",
            self.detect,
            self.default.policy.label()
        );
        for (dt, p) in &self.doctype {
            s.push_str(&format!("; {dt}={}", p.policy.label()));
        }
        s
    }
}

/// What an automatic decision did.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// The primary's version was written (or its delete carried out).
    Primary,
    /// The replica's copy was kept.
    Local,
    /// The merge of both sides was written.
    Merged(Box<Image>),
}

impl Action {
    /// The label stored as the audit record's resolution.
    pub fn label(&self) -> &'static str {
        match self {
            Action::Primary => "accept_primary",
            Action::Local => "keep_local",
            Action::Merged(_) => "merged",
        }
    }
}

/// An automatic decision, audited in `_frappe_cdc_conflicts` with status `auto`.
#[derive(Debug, Clone, PartialEq)]
pub struct Auto {
    pub policy: Policy,
    pub action: Action,
    /// The conflict the policy decided (as a manual conflict would have recorded it).
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_with_defaults_overrides_and_checks() {
        let p = Policies::from_config(
            r#"
brokers = "x:9092"
[conflicts]
default = "newest_wins"
detect = "row"
delete_changed = "manual"
[conflicts.doctype."Item Price"]
policy = "primary_wins"
[conflicts.doctype.Customer]
policy = "merge_fields"
fallback = "replica_wins"
insert_exists = "primary_wins"
"#,
        )
        .unwrap();
        assert_eq!(p.detect, Detect::Row);
        let other = p.of("Sales Invoice");
        assert_eq!(other.for_case(Case::UpdateChanged), Policy::NewestWins);
        assert_eq!(other.for_case(Case::DeleteChanged), Policy::Manual);
        assert_eq!(other.for_case(Case::Rename), Policy::Manual);
        assert_eq!(
            p.of("Item Price").for_case(Case::InsertExists),
            Policy::PrimaryWins
        );
        let c = p.of("Customer");
        assert_eq!(c.fallback, Policy::ReplicaWins);
        assert_eq!(c.for_case(Case::InsertExists), Policy::PrimaryWins);
        assert_eq!(c.for_case(Case::UpdateMissing), Policy::MergeFields);
        assert_eq!(Policies::from_config("").unwrap(), Policies::default());
        assert_eq!(
            Policies::default().of("X").for_case(Case::UpdateChanged),
            Policy::Manual
        );
        for bad in [
            "[conflicts]\ndefault = \"sometimes\"",
            "[conflicts]\npolcy = \"manual\"",
            "[conflicts.doctype.X]\npolicy = \"merge_fields\"\nfallback = \"merge_fields\"",
            "[conflicts.doctype.X]\nupdate_missing = \"merge_fields\"",
            "[conflicts.doctype.X]\nfallbak = \"manual\"",
        ] {
            assert!(Policies::from_config(bad).is_err(), "{bad}");
        }
    }

    use crate::apply::decision::{Comparator, Decision};
    use crate::envelope::Op;
    use serde_json::json;

    fn img(status: &str, remarks: &str, modified: &str, docstatus: i64) -> Image {
        serde_json::from_value(json!({"parent": {"name": "S1", "status": status,
            "remarks": remarks, "modified": modified, "docstatus": docstatus},
            "children": {"items": [{"name": "i1", "qty": 1, "idx": 1}]}}))
        .expect("image")
    }

    fn cmp(toml: &str) -> Comparator {
        Comparator::new(["_seen".to_string()]).with_policies(Policies::from_config(toml).unwrap())
    }

    fn auto(d: &Decision) -> (&'static str, &'static str) {
        match d {
            Decision::Auto(a) => (a.policy.label(), a.action.label()),
            other => panic!("not automatic: {other:?}"),
        }
    }

    const T0: &str = "2026-01-01 10:00:00.000000";
    const T1: &str = "2026-01-01 11:00:00.000000";
    const T2: &str = "2026-01-01 12:00:00.000000";

    #[test]
    fn each_policy_decides_an_overlapping_update() {
        let b = img("Draft", "", T0, 0);
        let a = img("Paid", "", T1, 0);
        let newer_local = img("Hold", "", T2, 0);
        let older_local = img("Hold", "", T0, 0);
        let up = |c: &Comparator, r: &Image| {
            c.decide_for("X", Op::Update, Some(&b), Some(&a), Some(r), None)
        };
        assert!(matches!(up(&cmp(""), &newer_local), Decision::Conflict(_)));
        let c = cmp("[conflicts]\ndefault = \"primary_wins\"");
        assert_eq!(
            auto(&up(&c, &newer_local)),
            ("primary_wins", "accept_primary")
        );
        let c = cmp("[conflicts]\ndefault = \"replica_wins\"");
        assert_eq!(auto(&up(&c, &newer_local)), ("replica_wins", "keep_local"));
        let c = cmp("[conflicts]\ndefault = \"newest_wins\"");
        assert_eq!(auto(&up(&c, &newer_local)), ("newest_wins", "keep_local"));
        assert_eq!(
            auto(&up(&c, &older_local)),
            ("newest_wins", "accept_primary")
        );
        let tie = img("Hold", "", T1, 0);
        assert_eq!(
            auto(&up(&c, &tie)),
            ("newest_wins", "accept_primary"),
            "a tie goes to the primary"
        );
        // merge_fields: an overlap (status) falls back to the named fallback
        let c =
            cmp("[conflicts.doctype.X]\npolicy = \"merge_fields\"\nfallback = \"replica_wins\"");
        let d = up(&c, &newer_local);
        assert_eq!(auto(&d), ("replica_wins", "keep_local"));
        assert!(
            matches!(&d, Decision::Auto(x) if x.reason.starts_with("merge_fields fell back (both sides changed parent.status)"))
        );
        // the policy is per doctype
        assert!(matches!(
            c.decide_for(
                "Y",
                Op::Update,
                Some(&b),
                Some(&a),
                Some(&newer_local),
                None
            ),
            Decision::Conflict(_)
        ));
    }

    #[test]
    fn merge_fields_merges_disjoint_changes_under_row_detection() {
        let b = img("Draft", "", T0, 0);
        let a = img("Paid", "", T1, 0);
        let local = img("Draft", "local", T2, 0);
        // changed-column detection: disjoint changes are no conflict, the merge is written
        let c = cmp("");
        match c.decide_for("X", Op::Update, Some(&b), Some(&a), Some(&local), None) {
            Decision::Merge(m) => {
                let p = m.parent.as_ref().unwrap();
                assert_eq!(
                    (p.str("status"), p.str("remarks"), p.str("modified")),
                    (Some("Paid"), Some("local"), Some(T2))
                );
            }
            other => panic!("{other:?}"),
        }
        // row detection: a conflict, which merge_fields decides by merging
        let c = cmp("[conflicts]\ndetect = \"row\"\ndefault = \"merge_fields\"");
        let d = c.decide_for("X", Op::Update, Some(&b), Some(&a), Some(&local), None);
        assert_eq!(auto(&d), ("merge_fields", "merged"));
        let c = cmp("[conflicts]\ndetect = \"row\"");
        assert!(matches!(
            c.decide_for("X", Op::Update, Some(&b), Some(&a), Some(&local), None),
            Decision::Conflict(_)
        ));
    }

    #[test]
    fn overrides_per_case() {
        let b = img("Draft", "", T0, 0);
        let a = img("Paid", "", T1, 0);
        let local = img("Hold", "", T2, 0);
        let c = cmp(
            "[conflicts]\nupdate_missing = \"primary_wins\"\ninsert_exists = \"replica_wins\"\ndelete_changed = \"newest_wins\"",
        );
        // update_missing
        assert_eq!(
            auto(&c.decide_for("X", Op::Update, Some(&b), Some(&a), None, None)),
            ("primary_wins", "accept_primary")
        );
        // insert_exists
        assert_eq!(
            auto(&c.decide_for("X", Op::Create, None, Some(&a), Some(&local), None)),
            ("replica_wins", "keep_local")
        );
        // delete_changed: the local copy is newer than the primary's last version
        assert_eq!(
            auto(&c.decide_for("X", Op::Delete, Some(&b), None, Some(&local), None)),
            ("newest_wins", "keep_local")
        );
        let stale = img("Hold", "", T0, 0);
        assert_eq!(
            auto(&c.decide_for("X", Op::Delete, Some(&b), None, Some(&stale), None)),
            ("newest_wins", "accept_primary")
        );
        // the overlapping update itself stays manual (the default)
        assert!(matches!(
            c.decide_for("X", Op::Update, Some(&b), Some(&a), Some(&local), None),
            Decision::Conflict(_)
        ));
        // renames always wait for an operator
        let c = cmp("[conflicts]\ndefault = \"primary_wins\"");
        assert!(matches!(
            c.decide_for("X", Op::Rename, Some(&b), Some(&a), Some(&local), None),
            Decision::Conflict(_)
        ));
    }

    #[test]
    fn docstatus_never_moves_back_and_submitted_documents_are_not_merged() {
        let c = cmp("[conflicts]\ndefault = \"primary_wins\"");
        let draft = img("Draft", "", T1, 0);
        let submitted = img("Submitted", "", T2, 1);
        let d = c.decide_for("X", Op::Create, None, Some(&draft), Some(&submitted), None);
        assert!(
            matches!(&d, Decision::Conflict(r) if r.starts_with("docstatus guard")),
            "{d:?}"
        );
        let d = c.decide_for("X", Op::Delete, Some(&draft), None, Some(&submitted), None);
        assert!(
            matches!(&d, Decision::Conflict(r) if r.starts_with("docstatus guard")),
            "{d:?}"
        );
        // forward is fine: a submitted primary version over a local draft edit
        let sub_after = img("Submitted", "", T2, 1);
        let local = img("Hold", "", T1, 0);
        let d = c.decide_for(
            "X",
            Op::Update,
            Some(&draft),
            Some(&sub_after),
            Some(&local),
            None,
        );
        assert_eq!(auto(&d), ("primary_wins", "accept_primary"));
        // a submitted document with disjoint local changes is not merged
        let b = img("Submitted", "", T0, 1);
        let a = img("Paid", "", T1, 1);
        let l = img("Submitted", "local", T1, 1);
        let c = cmp("[conflicts]\ndefault = \"merge_fields\"\ndetect = \"row\"");
        let d = c.decide_for("X", Op::Update, Some(&b), Some(&a), Some(&l), None);
        assert!(
            matches!(&d, Decision::Conflict(r) if r.starts_with("merge_fields: a submitted document")),
            "{d:?}"
        );
        let d = cmp("").decide_for("X", Op::Update, Some(&b), Some(&a), Some(&l), None);
        assert!(
            matches!(&d, Decision::Conflict(r) if r.starts_with("local changes to a submitted document")),
            "{d:?}"
        );
    }
}
