//! Fuzz target: `apply::admit::admit` over arbitrary message keys and values.
//!
//! Input layout: byte 0 = flags (bit 0: no key, bit 1: null value), bytes 1..3 = key length
//! (little endian, cut to what is there), then the key, then the value. Besides "never
//! panics, never overflows the stack" (libFuzzer catches both), it checks what the gate
//! promises: an admitted document is named by its key, and admitting the envelope re-encoded
//! gives the same document.
#![no_main]

use frappe_cdc::apply::admit::{Admitted, admit};
use frappe_cdc::envelope::Key;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let flags = data[0];
    let rest = &data[3..];
    let klen = (u16::from_le_bytes([data[1], data[2]]) as usize).min(rest.len());
    let (k, v) = rest.split_at(klen);
    let key = (flags & 1 == 0).then_some(k);
    let value = (flags & 2 == 0).then_some(v);
    match admit(key, value) {
        Err(reason) => assert!(!reason.is_empty()),
        Ok(Admitted::Tombstone(_)) => assert!(value.is_none()),
        Ok(Admitted::Doc(e, pos)) => {
            let k = Key::parse(key).expect("an admitted message has a valid key");
            assert_eq!((k.doctype.as_ref(), k.name.as_ref()), (e.doctype.as_str(), e.name.as_str()));
            let again = serde_json::to_vec(&*e).expect("re-encode");
            match admit(key, Some(&again)) {
                Ok(Admitted::Doc(e2, pos2)) => {
                    assert_eq!(*e2, *e);
                    assert_eq!(pos2, pos);
                }
                other => panic!("re-encoded envelope not admitted: {other:?}"),
            }
        }
    }
});
