//! The DocType catalog and the include/exclude filter.
//!
//! The catalog is built from `tabDocType` rows held in the state store, which capture keeps
//! current from the snapshot and the binlog. It therefore describes the schema *as of the
//! position being read*, not as of now, so a DocType created later in the binlog cannot
//! misroute earlier rows.

use std::collections::{BTreeSet, HashMap};

/// Doctypes left out unless included by name (frappe-write-paths.md §6): logs, sessions,
/// counters, timeline data, and schema tables.
pub const DEFAULT_EXCLUDED: &[&str] = &[
    "Version",
    "Error Log",
    "Scheduled Job Log",
    "Activity Log",
    "Access Log",
    "Route History",
    "View Log",
    "Energy Point Log",
    "Notification Log",
    "Email Queue",
    "Email Queue Recipient",
    "Console Log",
    "DocShare",
    "Document Follow",
    "Patch Log",
    "Scheduled Job Type",
    "Sessions",
    "Deleted Document",
    "Prepared Report",
    "Series",
    "DefaultValue",
    "Comment",
    "Communication",
    "Communication Link",
    "ToDo",
    "Tag Link",
    "File",
    "DocType",
    "DocField",
    "DocPerm",
    "DocType Link",
    "DocType Action",
    "DocType State",
    "Custom Field",
    "Property Setter",
    "Custom DocPerm",
    "Installed Application",
    "Installed Applications",
];

/// Columns whose changes alone do not make a new document version (§2.3).
pub const IGNORED_COLUMNS: &[&str] = &["_seen", "_comments", "_assign", "_liked_by", "_user_tags"];

/// What the catalog knows about one DocType.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DocTypeInfo {
    pub istable: bool,
    pub issingle: bool,
    pub is_virtual: bool,
}

/// Which doctypes are streamed.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    include: BTreeSet<String>,
    exclude: BTreeSet<String>,
    /// Streamed in addition to the default set (`--add-doctype`), e.g. `File` for
    /// attachments.
    add: BTreeSet<String>,
}

impl Filter {
    /// `include` empty means every doctype not excluded. Explicit includes override the default
    /// exclusions; `__Auth` and other `__` tables are never streamed.
    pub fn new(include: &[String], exclude: &[String]) -> Self {
        Filter {
            include: include.iter().map(|s| s.trim().to_string()).collect(),
            exclude: exclude.iter().map(|s| s.trim().to_string()).collect(),
            add: BTreeSet::new(),
        }
    }

    /// This filter, also streaming `add` (doctypes the default set leaves out, such as
    /// `File`), whatever `include` says.
    pub fn with_added(mut self, add: &[String]) -> Self {
        self.add.extend(add.iter().map(|s| s.trim().to_string()));
        self
    }

    /// True when `doctype` is streamed.
    pub fn tracks(&self, doctype: &str) -> bool {
        if self.exclude.contains(doctype) {
            return false;
        }
        if self.add.contains(doctype) {
            return true;
        }
        if !self.include.is_empty() {
            return self.include.contains(doctype);
        }
        !DEFAULT_EXCLUDED.contains(&doctype)
    }

    /// True when the binlog reader must decode `table` at all. Decided from the filter alone
    /// (no catalog), so it never drops a table that a later catalog change would track.
    pub fn reader_wants(&self, table: &str) -> bool {
        if table == "tabDocType" || table == "tabSingles" {
            return true;
        }
        let Some(doctype) = table.strip_prefix("tab") else {
            return false;
        };
        if self.exclude.contains(doctype) {
            return false;
        }
        self.include.contains(doctype)
            || self.add.contains(doctype)
            || !DEFAULT_EXCLUDED.contains(&doctype)
    }

    /// The configured lists, for the checkpoint's record of what the state holds.
    pub fn describe(&self) -> String {
        let mut d = format!(
            "include={:?} exclude={:?}",
            self.include.iter().collect::<Vec<_>>(),
            self.exclude.iter().collect::<Vec<_>>()
        );
        // Only when set: checkpoints written before `--add-doctype` existed stay equal.
        if !self.add.is_empty() {
            d.push_str(&format!(" add={:?}", self.add.iter().collect::<Vec<_>>()));
        }
        d
    }
}

/// DocType flags by name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    doctypes: HashMap<String, DocTypeInfo>,
}

fn flag(row: &serde_json::Value, col: &str) -> bool {
    match row.get(col) {
        Some(serde_json::Value::Number(n)) => n.as_i64().unwrap_or(0) != 0,
        Some(serde_json::Value::String(s)) => s != "0" && !s.is_empty(),
        Some(serde_json::Value::Bool(b)) => *b,
        _ => false,
    }
}

impl Catalog {
    /// Builds the catalog from `tabDocType` rows (JSON objects).
    pub fn from_rows<'a>(rows: impl IntoIterator<Item = &'a serde_json::Value>) -> Self {
        let mut doctypes = HashMap::new();
        for row in rows {
            if let Some(name) = row.get("name").and_then(|n| n.as_str()) {
                doctypes.insert(
                    name.to_string(),
                    DocTypeInfo {
                        istable: flag(row, "istable"),
                        issingle: flag(row, "issingle"),
                        is_virtual: flag(row, "is_virtual"),
                    },
                );
            }
        }
        Catalog { doctypes }
    }

    /// Flags of a doctype, if it is known.
    pub fn get(&self, doctype: &str) -> Option<DocTypeInfo> {
        self.doctypes.get(doctype).copied()
    }

    /// Number of doctypes.
    pub fn len(&self) -> usize {
        self.doctypes.len()
    }

    /// True when no doctype is known.
    pub fn is_empty(&self) -> bool {
        self.doctypes.is_empty()
    }

    /// Every known doctype with its flags.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &DocTypeInfo)> {
        self.doctypes.iter()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn added_doctypes_join_the_default_set_and_only_show_in_the_description_when_set() {
        let plain = Filter::new(&[], &[]);
        assert!(!plain.tracks("File") && plain.tracks("Customer"));
        let with = Filter::new(&[], &[]).with_added(&["File".into()]);
        assert!(with.tracks("File") && with.tracks("Customer") && !with.tracks("Version"));
        assert!(with.reader_wants("tabFile"));
        assert_eq!(plain.describe(), "include=[] exclude=[]");
        assert!(with.describe().ends_with(r#"add=["File"]"#));
        let ex = Filter::new(&[], &["File".into()]).with_added(&["File".into()]);
        assert!(!ex.tracks("File"), "an exclusion wins");
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn filter_defaults_includes_and_excludes() {
        let f = Filter::new(&[], &[]);
        assert!(f.tracks("Sales Invoice"));
        assert!(!f.tracks("Version"));
        assert!(f.reader_wants("tabSales Invoice"));
        assert!(!f.reader_wants("tabVersion"));
        assert!(
            f.reader_wants("tabDocType"),
            "catalog source is always read"
        );
        assert!(!f.reader_wants("__Auth"));
        let f = Filter::new(&["Version".into(), "Customer".into()], &["Customer".into()]);
        assert!(f.tracks("Version"));
        assert!(!f.tracks("Customer"), "exclude wins");
        assert!(!f.tracks("Item"));
        assert!(
            f.reader_wants("tabItem Tax"),
            "children of included parents must be decoded"
        );
    }

    #[test]
    fn catalog_flags_from_rows() {
        let rows = [
            json!({"name": "Sales Invoice Item", "istable": 1, "issingle": 0}),
            json!({"name": "System Settings", "istable": 0, "issingle": "1"}),
            json!({"name": "Customer"}),
            json!({"istable": 1}),
        ];
        let c = Catalog::from_rows(rows.iter());
        assert_eq!(c.len(), 3);
        assert!(c.get("Sales Invoice Item").unwrap().istable);
        assert!(c.get("System Settings").unwrap().issingle);
        assert_eq!(c.get("Customer").unwrap(), DocTypeInfo::default());
        assert!(c.get("Nope").is_none());
    }
}
