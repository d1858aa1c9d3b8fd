//! What a statement-format binlog event means for capture (I13, ARCHITECTURE.md).
//!
//! With `binlog_format=ROW` (checked by preflight) data changes arrive as row events and the
//! only QUERY events are DDL. A session can still switch itself to `STATEMENT` or `MIXED`, and
//! `TRUNCATE` is always logged as a statement: both change tracked documents without a row
//! event, so capture cannot say what the documents became. Such an event on a tracked table
//! halts capture (exit 2) with the fix, instead of being dropped as DDL; the checkpoint stays
//! before it, so nothing after it is published either.

use crate::frappe::catalog::Filter;

/// What capture does with a QUERY event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    /// DDL or a statement on a table capture does not track: counted, nothing emitted.
    Ignore,
    /// DDL that rewrites or removes a tracked table without row events (RENAME, DROP):
    /// warned about, since a DocType rename or deletion does this on purpose.
    Rewrites { verb: &'static str },
    /// A data change on `table` without row events: capture must stop.
    Halt { verb: &'static str, table: String },
}

/// Skips whitespace and `/* … */` comments (MariaDB prefixes some statements with them).
fn skip_noise(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("/*") {
            s = rest.find("*/").map_or("", |i| &rest[i + 2..]);
        } else {
            return s;
        }
    }
}

/// The next word (letters, digits, `_`), upper-cased, and the rest.
fn word(s: &str) -> (String, &str) {
    let s = skip_noise(s);
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (s[..end].to_ascii_uppercase(), &s[end..])
}

/// A table reference: `name`, `` `name` ``, `db.name`, `` `db`.`name` `` (the table part).
fn table_name(s: &str) -> Option<String> {
    let mut s = skip_noise(s);
    let mut last = None;
    loop {
        let (part, rest) = if let Some(q) = s.strip_prefix('`') {
            let mut out = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                if c == '`' {
                    if q[i + 1..].starts_with('`') {
                        out.push('`');
                        chars.next();
                    } else {
                        end = Some(i + 1);
                        break;
                    }
                } else {
                    out.push(c);
                }
            }
            (out, &q[end?..])
        } else {
            let end = s
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
                .unwrap_or(s.len());
            if end == 0 {
                return last;
            }
            (s[..end].to_string(), &s[end..])
        };
        last = Some(part);
        match rest.strip_prefix('.') {
            Some(r) => s = r,
            None => return last,
        }
    }
}

/// Skips the optional keywords before a DML statement's table.
fn after_modifiers<'a>(mut s: &'a str, skip: &[&str]) -> &'a str {
    loop {
        let (w, rest) = word(s);
        if skip.contains(&w.as_str()) {
            s = rest;
        } else {
            return s;
        }
    }
}

/// Classifies the text of a QUERY event for a capture with `filter`, by its table alone
/// (a schema qualifier is dropped: a statement run in another schema that names this one's
/// table is judged the same). A data change whose table cannot be read halts too: it may be
/// tracked.
pub fn classify(query: &str, filter: &Filter) -> Statement {
    let (verb, rest) = word(query);
    let (verb, target): (&'static str, Option<String>) = match verb.as_str() {
        "INSERT" => (
            "INSERT",
            table_name(after_modifiers(
                rest,
                &["LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO"],
            )),
        ),
        "REPLACE" => (
            "REPLACE",
            table_name(after_modifiers(rest, &["LOW_PRIORITY", "DELAYED", "INTO"])),
        ),
        "UPDATE" => (
            "UPDATE",
            table_name(after_modifiers(rest, &["LOW_PRIORITY", "IGNORE"])),
        ),
        "DELETE" => (
            "DELETE",
            table_name(after_modifiers(
                rest,
                &["LOW_PRIORITY", "QUICK", "IGNORE", "FROM"],
            )),
        ),
        "TRUNCATE" => ("TRUNCATE", table_name(after_modifiers(rest, &["TABLE"]))),
        "LOAD" => ("LOAD DATA", None),
        "RENAME" => return rewrites("RENAME", rest),
        "DROP" => return rewrites("DROP", rest),
        _ => return Statement::Ignore,
    };
    match target {
        Some(t) if !tracked(&t, filter) => Statement::Ignore,
        Some(table) => Statement::Halt { verb, table },
        None => Statement::Halt {
            verb,
            table: "(unreadable table name)".into(),
        },
    }
}

fn rewrites(verb: &'static str, rest: &str) -> Statement {
    let (w, _) = word(rest);
    if w == "TABLE" || w == "TABLES" {
        Statement::Rewrites { verb }
    } else {
        Statement::Ignore
    }
}

fn tracked(table: &str, filter: &Filter) -> bool {
    table == "tabSingles" || filter.reader_wants(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(q: &str) -> Statement {
        classify(q, &Filter::new(&[], &["ToDo".into()]))
    }

    #[test]
    fn data_changes_on_tracked_tables_halt() {
        for (q, verb, table) in [
            (
                "INSERT INTO `tabSales Invoice` (name) VALUES ('x')",
                "INSERT",
                "tabSales Invoice",
            ),
            (
                "insert low_priority ignore into tabCustomer values (1)",
                "INSERT",
                "tabCustomer",
            ),
            (
                "/* app */ UPDATE `site1`.`tabItem` SET x = 1",
                "UPDATE",
                "tabItem",
            ),
            (
                "DELETE FROM `tabSingles` WHERE doctype='X'",
                "DELETE",
                "tabSingles",
            ),
            ("REPLACE INTO `tab``Odd` VALUES (1)", "REPLACE", "tab`Odd"),
            (
                "TRUNCATE TABLE `tabSales Invoice Item`",
                "TRUNCATE",
                "tabSales Invoice Item",
            ),
            ("truncate tabCustomer", "TRUNCATE", "tabCustomer"),
        ] {
            assert_eq!(
                c(q),
                Statement::Halt {
                    verb,
                    table: table.into()
                },
                "{q}"
            );
        }
        assert!(matches!(
            c("LOAD DATA INFILE '/x' INTO TABLE tabItem"),
            Statement::Halt { .. }
        ));
    }

    #[test]
    fn untracked_tables_and_ddl_are_ignored() {
        for q in [
            "INSERT INTO `tabToDo` VALUES (1)",
            "UPDATE __global_search SET x = 1",
            "DELETE FROM `tabSessions`",
            "TRUNCATE TABLE `__UserSettings`",
            "ALTER TABLE `tabItem` ADD COLUMN x int",
            "CREATE TABLE `tabNew` (name varchar(140))",
            "SAVEPOINT a",
            "",
            "/* unterminated",
        ] {
            assert_eq!(c(q), Statement::Ignore, "{q}");
        }
        assert_eq!(
            c("RENAME TABLE `tabA` TO `tabB`"),
            Statement::Rewrites { verb: "RENAME" }
        );
        assert_eq!(
            c("DROP TABLE IF EXISTS `tabA`"),
            Statement::Rewrites { verb: "DROP" }
        );
        assert_eq!(c("DROP INDEX i ON `tabA`"), Statement::Ignore);
    }
}
