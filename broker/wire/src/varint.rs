//! Kafka's zig-zag varints (records inside a batch) and unsigned varints (flexible versions).

use thiserror::Error;

/// A varint that ran past the end of its buffer or past 10 bytes.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("malformed varint")]
pub struct VarintError;

/// Appends `v` as an unsigned LEB128 varint.
pub fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `v` as a zig-zag varint (Kafka `varint`/`varlong`).
pub fn put_varint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Reads an unsigned varint from the front of `buf`; returns it and the bytes consumed.
pub fn get_uvarint(buf: &[u8]) -> Result<(u64, usize), VarintError> {
    let mut v = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    Err(VarintError)
}

/// Reads a zig-zag varint from the front of `buf`; returns it and the bytes consumed.
pub fn get_varint(buf: &[u8]) -> Result<(i64, usize), VarintError> {
    let (u, n) = get_uvarint(buf)?;
    Ok((((u >> 1) as i64) ^ -((u & 1) as i64), n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varint_round_trips(v in any::<i64>()) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            prop_assert_eq!(get_varint(&out), Ok((v, out.len())));
        }
    }

    #[test]
    fn known_encodings() {
        let mut out = Vec::new();
        put_varint(&mut out, -1);
        put_varint(&mut out, 300);
        assert_eq!(out, [0x01, 0xd8, 0x04]);
    }

    #[test]
    fn truncated_varint_is_an_error() {
        assert_eq!(get_uvarint(&[0x80, 0x80]), Err(VarintError));
        assert_eq!(get_uvarint(&[0xff; 11]), Err(VarintError));
    }
}
