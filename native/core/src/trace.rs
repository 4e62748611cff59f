//! Trace and span identifiers in the W3C Trace Context text form.

use rand::Rng;

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 0x0f) as usize];
    }
}

/// A trace id: a random UUID v4 (version nibble 4, variant bits `10`) as 32
/// lowercase hex digits. The version nibble makes it never all zero.
pub fn generate_trace_id<R: Rng + ?Sized>(rng: &mut R) -> [u8; 32] {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
    raw[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
    raw[6] = (raw[6] & 0x0f) | 0x40;
    raw[8] = (raw[8] & 0x3f) | 0x80;
    let mut out = [0u8; 32];
    hex_into(&raw, &mut out);
    out
}

/// A span id: 8 random bytes, never all zero, as 16 lowercase hex digits.
pub fn generate_span_id<R: Rng + ?Sized>(rng: &mut R) -> [u8; 16] {
    let mut v = rng.next_u64();
    while v == 0 {
        v = rng.next_u64();
    }
    let mut out = [0u8; 16];
    hex_into(&v.to_be_bytes(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn trace_id_is_uuid_v4_hex() {
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..1000 {
            let id = generate_trace_id(&mut rng);
            assert!(
                id.iter()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
            );
            assert_eq!(id[12], b'4');
            assert!(matches!(id[16], b'8' | b'9' | b'a' | b'b'));
        }
    }

    #[test]
    fn span_id_is_nonzero_hex() {
        let mut rng = SmallRng::seed_from_u64(2);
        for _ in 0..1000 {
            let id = generate_span_id(&mut rng);
            assert!(id.iter().any(|&c| c != b'0'));
            assert!(
                id.iter()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
            );
        }
    }
}
