//! Canonical JSON: object keys sorted, no insignificant whitespace.
//!
//! oci-spec keeps labels, annotations and exposed ports in `HashMap`s, whose
//! iteration order changes from process to process; serializing them as they
//! come would give a new config digest on every run. Going through
//! `serde_json::Value` and writing the keys sorted here does not depend on
//! whether some other crate in the binary turned on serde_json's
//! `preserve_order` feature.

use serde::Serialize;
use serde_json::Value;

use super::ImageError;

/// Serializes `value` as canonical JSON bytes.
pub(crate) fn to_canonical_vec<T: Serialize>(
    value: &T,
    what: &'static str,
) -> Result<Vec<u8>, ImageError> {
    let value = serde_json::to_value(value).map_err(|e| ImageError::document(what, e))?;
    let mut out = Vec::with_capacity(1024);
    write_value(&value, &mut out).map_err(|e| ImageError::document(what, e))?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> serde_json::Result<()> {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key)?;
                out.push(b':');
                write_value(item, out)?;
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn keys_come_out_sorted_at_every_level() -> Result<(), ImageError> {
        let mut inner = HashMap::new();
        for key in ["zeta", "alpha", "mid"] {
            inner.insert(key.to_string(), 1);
        }
        let mut outer = HashMap::new();
        outer.insert("b".to_string(), vec![inner.clone()]);
        outer.insert("a".to_string(), vec![inner]);
        let bytes = to_canonical_vec(&outer, "test")?;
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            r#"{"a":[{"alpha":1,"mid":1,"zeta":1}],"b":[{"alpha":1,"mid":1,"zeta":1}]}"#
        );
        Ok(())
    }
}
