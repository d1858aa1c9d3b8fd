//! SQL string literals, for statements whose values cannot all be bound as parameters (the
//! child-row names a large delete keeps: the binary protocol allows 65,535 parameters a
//! statement).
//!
//! Safety does not depend on the session's `sql_mode`: a string is written as a plain quoted
//! literal only when it holds no quote, no backslash and no control byte (such a literal means
//! the same with and without `NO_BACKSLASH_ESCAPES`); any other string is written as a
//! `_utf8mb4 X'…'` hex literal, which has no escapes at all.

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

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(v: &str) -> String {
        let mut s = String::new();
        push_str(&mut s, v);
        s
    }

    #[test]
    fn plain_strings_stay_readable() {
        assert_eq!(lit("SINV-0001"), "'SINV-0001'");
        assert_eq!(
            lit("2024-06-01 10:00:00.000001"),
            "'2024-06-01 10:00:00.000001'"
        );
        assert_eq!(lit("Größe \"x\" ✓"), "'Größe \"x\" ✓'");
    }

    #[test]
    fn anything_escapable_is_hex() {
        assert_eq!(lit("O'Brien"), "_utf8mb4 X'4F27427269656E'");
        assert_eq!(lit("a\\b"), "_utf8mb4 X'615C62'");
        assert_eq!(lit("a\nb"), "_utf8mb4 X'610A62'");
        assert_eq!(lit("\u{0}"), "_utf8mb4 X'00'");
        assert_eq!(lit("\u{7f}"), "_utf8mb4 X'7F'");
    }
}
