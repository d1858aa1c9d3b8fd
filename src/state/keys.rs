//! Byte keys for the state store: each component is a big-endian u32 length and its bytes, so
//! the key of `(a, b)` is a strict prefix of every key `(a, b, ...)` and no name can fake a
//! separator.

/// Appends one length-prefixed component.
pub fn push(key: &mut Vec<u8>, part: &str) {
    key.extend_from_slice(&(part.len() as u32).to_be_bytes());
    key.extend_from_slice(part.as_bytes());
}

/// Encodes components into a key.
pub fn encode(parts: &[&str]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
    for p in parts {
        push(&mut k, p);
    }
    k
}

/// Decodes a key into its components; `None` if it is malformed.
pub fn decode(mut key: &[u8]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    while !key.is_empty() {
        let len = u32::from_be_bytes(key.get(0..4)?.try_into().ok()?) as usize;
        let part = key.get(4..4 + len)?;
        out.push(String::from_utf8(part.to_vec()).ok()?);
        key = &key[4 + len..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_prefix() {
        let k = encode(&["Sales Invoice", "SINV-1", "tabSales Invoice Item", "abc"]);
        assert_eq!(
            decode(&k).unwrap(),
            vec!["Sales Invoice", "SINV-1", "tabSales Invoice Item", "abc"]
        );
        let p = encode(&["Sales Invoice", "SINV-1"]);
        assert!(k.starts_with(&p));
        // "SINV-1" must not be a prefix match for "SINV-10".
        let other = encode(&["Sales Invoice", "SINV-10", "t", "x"]);
        assert!(!other.starts_with(&p));
        assert!(decode(&[0, 0, 0, 9, b'a']).is_none());
    }
}
