//! SQL literals for the bulk write statements, sent over the text protocol.
//!
//! Why not placeholders: a 500-document batch writes thousands of rows; as prepared statements
//! that is one PREPARE per distinct row count (the server answers with a definition packet
//! per placeholder, tens of thousands of them) before every execution. One multi-row text
//! statement is a single round trip and a single parse.
//!
//! Safety does not depend on the session's `sql_mode`: a string is written as a plain quoted
//! literal only when it holds no quote, no backslash and no control byte (such a literal means
//! the same with and without `NO_BACKSLASH_ESCAPES`); any other string is written as a
//! `_utf8mb4 X'…'` hex literal, which has no escapes at all. Binary values (`{"$base64": …}`)
//! are bare `X'…'` binary strings. Numbers are JSON numbers, which are valid SQL numerals.

use serde_json::Value;

use crate::cell::binary_from_json;

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_hex(out: &mut String, bytes: &[u8]) {
    out.reserve(bytes.len() * 2 + 3);
    out.push_str("X'");
    for b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
    out.push('\'');
}

/// Appends `s` as a character string literal.
pub fn push_str(out: &mut String, s: &str) {
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'\'' && b != b'\\' && b != 0x7f)
    {
        out.reserve(s.len() + 2);
        out.push('\'');
        out.push_str(s);
        out.push('\'');
    } else {
        out.push_str("_utf8mb4 ");
        push_hex(out, s.as_bytes());
    }
}

/// Appends the literal of a JSON cell value as the apply path writes it (the same values
/// `replica::to_param` binds).
pub fn push_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("NULL"),
        Value::Bool(b) => out.push(if *b { '1' } else { '0' }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => push_str(out, s),
        Value::Object(_) => match binary_from_json(v) {
            Some(b) => push_hex(out, &b),
            None => push_str(out, &v.to_string()),
        },
        Value::Array(_) => push_str(out, &v.to_string()),
    }
}

/// One row as a SQL tuple: `(v1,v2,...)`.
pub fn tuple(values: &[&Value]) -> String {
    let mut out = String::with_capacity(64 + values.len() * 24);
    out.push('(');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_value(&mut out, v);
    }
    out.push(')');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lit(v: Value) -> String {
        let mut s = String::new();
        push_value(&mut s, &v);
        s
    }

    #[test]
    fn plain_values_stay_readable() {
        assert_eq!(lit(json!(null)), "NULL");
        assert_eq!(lit(json!(true)), "1");
        assert_eq!(lit(json!(-42)), "-42");
        assert_eq!(lit(json!(18446744073709551615u64)), "18446744073709551615");
        assert_eq!(lit(json!(1.5)), "1.5");
        assert_eq!(lit(json!("SINV-0001")), "'SINV-0001'");
        assert_eq!(
            lit(json!("2024-06-01 10:00:00.000001")),
            "'2024-06-01 10:00:00.000001'"
        );
        assert_eq!(lit(json!("Größe \"x\" ✓")), "'Größe \"x\" ✓'");
    }

    #[test]
    fn anything_escapable_is_hex() {
        assert_eq!(lit(json!("O'Brien")), "_utf8mb4 X'4F27427269656E'");
        assert_eq!(lit(json!("a\\b")), "_utf8mb4 X'615C62'");
        assert_eq!(lit(json!("a\nb")), "_utf8mb4 X'610A62'");
        assert_eq!(lit(json!("\u{0}")), "_utf8mb4 X'00'");
        assert_eq!(lit(json!({"$base64": "AP8="})), "X'00FF'");
        assert_eq!(lit(json!({"a": "'"})), "_utf8mb4 X'7B2261223A2227227D'");
        assert_eq!(lit(json!([1, 2])), "'[1,2]'");
        assert_eq!(
            tuple(&[&json!("a'"), &json!(null)]),
            "(_utf8mb4 X'6127',NULL)"
        );
    }
}
