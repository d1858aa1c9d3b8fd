//! Settings of `apply` and its row filters (`--filter`).

use std::time::Duration;

use crate::db::DbTarget;
use crate::envelope::Envelope;
use crate::frappe::catalog::Filter;

/// Settings of `apply`.
#[derive(Clone)]
pub struct ApplyConfig {
    pub replica: DbTarget,
    pub brokers: String,
    pub topic: String,
    pub group: String,
    pub dead_letter_topic: String,
    pub filter: Filter,
    pub ignore_columns: Vec<String>,
    pub max_backoff: Duration,
    /// Row filters: a document of a listed doctype is applied only when its parent row
    /// (after the change, or before it for a delete) has every listed column value.
    pub row_filters: Vec<RowFilter>,
    /// Most messages applied in one replica transaction.
    pub batch_size: usize,
    /// Replica connections a batch is split over (see `run_bulk`).
    pub writers: usize,
    /// Extra librdkafka settings (`--kafka-option`): all go to the consumer, the connection
    /// ones (security, SASL, TLS, client.id) also to the dead-letter producer and admin client.
    pub kafka_options: Vec<(String, String)>,
    /// What a reader of the replica can see (`--consistency`).
    pub consistency: Consistency,
    /// In `Transaction` consistency, source transactions with more documents than this are
    /// applied in parts (`sequence.rs`).
    pub max_transaction_docs: u64,
    /// In `Transaction` consistency: a conflict in one document holds its whole source
    /// transaction (every document recorded) instead of skipping only that document.
    pub hold_transactions: bool,
    /// Conflict policies (the `[conflicts]` table of `--config`).
    pub policies: super::policy::Policies,
    /// Copy File documents' bytes into the replica's site folder (`--files-to`).
    pub files: Option<std::sync::Arc<crate::files::fetch::FilesConfig>>,
}

/// What a conflict in one document does to the rest of its source transaction
/// (`--consistency transaction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnConflictInTransaction {
    /// Skip (record) only the conflicting document; the rest of the transaction applies.
    SkipDocument,
    /// Record every document of the transaction as a conflict; apply none of it.
    HoldTransaction,
}

/// What a reader of the replica can see while apply runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Consistency {
    /// Each document is applied atomically; the documents of one source transaction may land
    /// in different replica transactions (and in another order across partitions).
    Document,
    /// The documents of each source transaction are applied in one replica transaction, in
    /// source commit order across partitions (`sequence.rs`): a reader never sees half of a
    /// source transaction (except one larger than --max-transaction-docs, or the snapshot).
    Transaction,
}

/// Consumer settings apply relies on; `--kafka-option` may not set these.
pub const FIXED_CONSUMER_OPTIONS: &[&str] = &[
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "bootstrap.servers",
    "auto.offset.reset",
];

/// `--filter 'DocType:{"column": value, ...}'`.
#[derive(Debug, Clone, PartialEq)]
pub struct RowFilter {
    pub doctype: String,
    pub equals: serde_json::Map<String, serde_json::Value>,
}

impl RowFilter {
    /// Parses `DocType:{json object}`.
    pub fn parse(s: &str) -> Result<RowFilter, String> {
        let (doctype, json) = s
            .split_once(':')
            .ok_or_else(|| format!("--filter {s:?}: expected DocType:{{\"column\": value}}"))?;
        let equals: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json.trim())
            .map_err(|e| format!("--filter {s:?}: not a JSON object: {e}"))?;
        if doctype.trim().is_empty() || equals.is_empty() {
            return Err(format!(
                "--filter {s:?}: needs a doctype and at least one column"
            ));
        }
        Ok(RowFilter {
            doctype: doctype.trim().to_string(),
            equals,
        })
    }

    /// True when `e` passes the filters that name its doctype (all of them).
    pub fn admits(filters: &[RowFilter], e: &Envelope) -> bool {
        let img = e.after.as_ref().or(e.before.as_ref());
        filters.iter().filter(|f| f.doctype == e.doctype).all(|f| {
            let parent = img.and_then(|i| i.parent.as_ref());
            f.equals
                .iter()
                .all(|(k, v)| parent.and_then(|p| p.get(k)) == Some(v))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_filters_parse_and_admit() {
        let f = RowFilter::parse(r#"Sales Invoice:{"company": "Acme", "docstatus": 1}"#).unwrap();
        assert_eq!(f.doctype, "Sales Invoice");
        assert!(RowFilter::parse("nocolon").is_err());
        assert!(RowFilter::parse("X:[1]").is_err());
        assert!(RowFilter::parse("X:{}").is_err());
        let env = |company: &str, op: &str| -> Envelope {
            let img =
                serde_json::json!({"parent": {"company": company, "docstatus": 1}, "children": {}});
            let (before, after) = if op == "delete" {
                (Some(img), None)
            } else {
                (None, Some(img))
            };
            serde_json::from_value(serde_json::json!({"version": 1, "op": op, "doctype": "Sales Invoice", "name": "S", "before": before, "after": after, "changes": {},
                "source": {"server_id": 1, "db": "d", "gtid": "0-1-1", "position": "0-1-1", "file": "", "pos": 0, "commit_ts": 0, "doc_index": 0, "doc_count": 1, "snapshot": false}})).unwrap()
        };
        let filters = vec![f];
        assert!(RowFilter::admits(&filters, &env("Acme", "create")));
        assert!(!RowFilter::admits(&filters, &env("Other", "create")));
        assert!(
            RowFilter::admits(&filters, &env("Acme", "delete")),
            "a delete is judged by its before image"
        );
        let mut other = env("Other", "create");
        other.doctype = "Customer".into();
        assert!(
            RowFilter::admits(&filters, &other),
            "filters only bind their doctype"
        );
    }
}
