//! `LOAD DATA LOCAL INFILE` from memory: the fast path for rows the replica does not have yet.
//!
//! Why: on the 2-core bench machine MariaDB executes multi-row `INSERT`s at ~62k rows/s and
//! `LOAD DATA` at ~103k rows/s; native replication applies ~88k rows/s. A backlog of new
//! documents is almost all inserts, so this path decides apply's catch-up speed.
//!
//! How: the rows are rendered as tab-separated text ([`push_field`]) and registered under a
//! one-time name; the statement names that file and the pool's LOCAL INFILE handler
//! ([`handler`]) serves it from the registry. The handler serves only registered names, each
//! once, so a server cannot read anything else from this process.
//!
//! Safety: `LOAD DATA LOCAL` turns duplicate keys and conversion errors into warnings (the
//! server cannot stop the client mid-file). The caller therefore checks that every row was
//! inserted and that no warning was raised, and otherwise fails the batch, which then goes
//! through the one-document path with ordinary statements and ordinary errors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use mysql_async::{InfileData, LocalInfileError};
use serde_json::Value;

use crate::image::Image;

fn registry() -> &'static Mutex<HashMap<Vec<u8>, Vec<u8>>> {
    static R: OnceLock<Mutex<HashMap<Vec<u8>, Vec<u8>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// Data registered for one `LOAD DATA LOCAL INFILE` statement; unregistered when dropped.
pub struct Registered {
    name: String,
}

impl Registered {
    /// Registers `data` under a fresh name.
    pub fn new(data: Vec<u8>) -> Registered {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "frappe-cdc-bulk-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        if let Ok(mut r) = registry().lock() {
            r.insert(name.clone().into_bytes(), data);
        }
        Registered { name }
    }

    /// The file name to put in the statement (plain ASCII, no quoting needed).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut r) = registry().lock() {
            r.remove(self.name.as_bytes());
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the server asked for a LOCAL INFILE this process did not register")]
struct NotRegistered;

/// The pool's global LOCAL INFILE handler: serves registered data once, refuses anything else.
pub fn handler(
    name: &[u8],
) -> futures::future::BoxFuture<'static, Result<InfileData, LocalInfileError>> {
    let data = registry().lock().ok().and_then(|mut r| r.remove(name));
    Box::pin(async move {
        match data {
            Some(d) => {
                let s = futures::stream::once(async move { Ok(bytes::Bytes::from(d)) });
                Ok(Box::pin(s) as InfileData)
            }
            None => Err(LocalInfileError::other(NotRegistered)),
        }
    })
}

fn push_escaped(out: &mut Vec<u8>, s: &[u8]) {
    // Runs of ordinary bytes are copied whole; only the five special bytes are escaped.
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let esc: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            0 => b"\\0",
            _ => continue,
        };
        out.extend_from_slice(&s[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
}

/// Whether this path carries `v` (not binary `{"$base64": …}` cells).
fn carries(v: &Value) -> bool {
    !matches!(v, Value::Object(m) if m.contains_key("$base64"))
}

/// Whether every value of `img` can go through `LOAD DATA` (see [`push_field`]).
pub fn loadable(img: &Image) -> bool {
    img.parent
        .iter()
        .chain(img.children.values().flatten())
        .all(|r| r.values().all(carries))
}

/// Appends one field in `LOAD DATA`'s default format (tab-separated, backslash escapes, `\N`
/// for NULL). Returns false for values this path does not carry (binary `{"$base64": …}`
/// cells): the caller writes such rows with an ordinary statement.
pub fn push_field(out: &mut Vec<u8>, v: &Value) -> bool {
    match v {
        Value::Null => out.extend_from_slice(b"\\N"),
        Value::Bool(b) => out.push(if *b { b'1' } else { b'0' }),
        Value::Number(n) => {
            use std::io::Write;
            let _ = write!(out, "{n}");
        }
        Value::String(s) => push_escaped(out, s.as_bytes()),
        Value::Object(_) if !carries(v) => return false,
        Value::Object(_) | Value::Array(_) => push_escaped(out, v.to_string().as_bytes()),
    }
    true
}

/// Appends one row as a `LOAD DATA` line (fields joined by tabs, newline-terminated) to
/// `out`; false, with `out` unchanged, when a value does not fit this path (see
/// [`push_field`]).
pub fn push_line<'a>(out: &mut Vec<u8>, values: impl IntoIterator<Item = &'a Value>) -> bool {
    let start = out.len();
    for (i, v) in values.into_iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        if !push_field(out, v) {
            out.truncate(start);
            return false;
        }
    }
    out.push(b'\n');
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use serde_json::json;

    #[test]
    fn fields_are_escaped_for_load_data() {
        let mut out = Vec::new();
        for v in [
            json!(null),
            json!("a\tb\nc\\d\r\u{0}"),
            json!("\\N"),
            json!(-1.5),
            json!(true),
            json!({"a": 1}),
        ] {
            assert!(push_field(&mut out, &v));
            out.push(b'|');
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\\N|a\\tb\\nc\\\\d\\r\\0|\\\\N|-1.5|1|{\"a\":1}|"
        );
        assert!(!push_field(&mut Vec::new(), &json!({"$base64": "AA=="})));
        let mut out = b"x\n".to_vec();
        assert!(push_line(&mut out, &[json!("a"), json!(null), json!(2)]));
        assert_eq!(out, b"x\na\t\\N\t2\n");
        assert!(!push_line(
            &mut out,
            &[json!("a"), json!({"$base64": "AA=="})]
        ));
        assert_eq!(
            out, b"x\na\t\\N\t2\n",
            "a refused row leaves nothing behind"
        );
    }

    #[tokio::test]
    async fn registered_data_is_served_once_and_nothing_else() {
        let r = Registered::new(b"x\ty\n".to_vec());
        let mut s = handler(r.name().as_bytes()).await.unwrap();
        assert_eq!(s.next().await.unwrap().unwrap(), &b"x\ty\n"[..]);
        assert!(handler(r.name().as_bytes()).await.is_err(), "served twice");
        assert!(handler(b"/etc/passwd").await.is_err());
        let name = {
            let r = Registered::new(b"z".to_vec());
            r.name().to_string()
        };
        assert!(
            handler(name.as_bytes()).await.is_err(),
            "dropped registration"
        );
    }
}
