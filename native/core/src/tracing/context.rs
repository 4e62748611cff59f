//! Trace and span identifiers in the W3C Trace Context text form, and the
//! `traceparent` and `tracestate` headers.

use rand::Rng;
use thiserror::Error;

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

/// A header refused by the W3C Trace Context rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("invalid trace context")]
pub struct InvalidTraceContext;

/// The `sampled` trace flag (bit 0).
pub const FLAG_SAMPLED: u8 = 0x01;
/// The `random` trace flag of Level 2 (bit 1): the trace id's right-most 7
/// bytes are random. Set on every trace this crate starts (its trace ids are
/// UUID v4, random but for the version and variant bits, which lie outside
/// those 7 bytes).
pub const FLAG_RANDOM: u8 = 0x02;
/// The flags Level 2 defines; the others are reserved and set to zero when a
/// context is passed on, as the recommendation requires.
pub const KNOWN_FLAGS: u8 = FLAG_SAMPLED | FLAG_RANDOM;

/// A parsed `traceparent`: ids as lowercase hex, as they travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub version: u8,
    pub trace_id: [u8; 32],
    pub parent_id: [u8; 16],
    pub flags: u8,
}

fn lower_hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(s: &[u8]) -> Result<u8, InvalidTraceContext> {
    match (lower_hex(s[0]), lower_hex(s[1])) {
        (Some(h), Some(l)) => Ok(h << 4 | l),
        _ => Err(InvalidTraceContext),
    }
}

/// Lowercase hex, and not all zeros.
fn nonzero_hex(s: &[u8]) -> Result<(), InvalidTraceContext> {
    let mut any = false;
    for &b in s {
        any |= lower_hex(b).ok_or(InvalidTraceContext)? != 0;
    }
    if any {
        Ok(())
    } else {
        Err(InvalidTraceContext)
    }
}

/// Parses a `traceparent` header: `version-traceid-parentid-flags`, lowercase
/// hex. Version `00` is exactly 55 characters; a higher version is read by its
/// first four fields, and what follows them must start with `-`; version `ff`,
/// upper-case hex, all-zero ids and wrong lengths or separators are refused.
pub fn parse_traceparent(s: &[u8]) -> Result<TraceParent, InvalidTraceContext> {
    if s.len() < 55
        || s.len() > TRACEPARENT_MAX_BYTES
        || s[2] != b'-'
        || s[35] != b'-'
        || s[52] != b'-'
    {
        return Err(InvalidTraceContext);
    }
    let version = hex_byte(&s[0..2])?;
    match version {
        0xff => return Err(InvalidTraceContext),
        0 if s.len() != 55 => return Err(InvalidTraceContext),
        _ if s.len() > 55 && s[55] != b'-' => return Err(InvalidTraceContext),
        _ => {}
    }
    nonzero_hex(&s[3..35])?;
    nonzero_hex(&s[36..52])?;
    let flags = hex_byte(&s[53..55])?;
    let mut trace_id = [0u8; 32];
    trace_id.copy_from_slice(&s[3..35]);
    let mut parent_id = [0u8; 16];
    parent_id.copy_from_slice(&s[36..52]);
    Ok(TraceParent {
        version,
        trace_id,
        parent_id,
        flags,
    })
}

/// Formats a `traceparent` of version `00` (this implementation's version,
/// whatever version it parsed): 55 characters.
pub fn format_traceparent(tp: &TraceParent) -> [u8; 55] {
    let mut out = [b'-'; 55];
    out[0] = b'0';
    out[1] = b'0';
    out[3..35].copy_from_slice(&tp.trace_id);
    out[36..52].copy_from_slice(&tp.parent_id);
    hex_into(&[tp.flags], &mut out[53..55]);
    out
}

/// Whether `id` is lowercase hex of `len` digits, not all zero: a trace id
/// (32) or a span id (16) that `format_traceparent` may carry.
pub fn valid_id(id: &[u8], len: usize) -> bool {
    id.len() == len && nonzero_hex(id).is_ok()
}

/// Most list members a `tracestate` may carry.
pub const TRACESTATE_MAX_MEMBERS: usize = 32;

/// Longest `traceparent` read, in bytes: version 00 is 55; a later version
/// may add fields, not kilobytes.
pub const TRACEPARENT_MAX_BYTES: usize = 512;

/// Longest `tracestate` read, in bytes: twice the longest header the grammar
/// allows without spaces (32 members of a 256-byte key and a 256-byte
/// value), so no valid header is refused for its length and no scan of a
/// hostile one goes further.
pub const TRACESTATE_MAX_BYTES: usize = 32_768;

fn key_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'*' | b'/' | b'@')
}

/// `key` of Level 2: `(lcalpha / DIGIT) 0*255(lcalpha / DIGIT / "_" / "-" /
/// "*" / "/" / "@")`. Level 1's multi-tenant form (`tenant@system`, a tenant
/// of at most 241 characters and a system of at most 14) is a special case;
/// Level 2 relaxed it, so `foo@bar@baz`, `foo@@bar`, `foo@` and a 242-character
/// tenant are keys, and a key starting with `@` is not.
fn valid_key(key: &[u8]) -> bool {
    (1..=256).contains(&key.len())
        && (key[0].is_ascii_lowercase() || key[0].is_ascii_digit())
        && key.iter().all(|&c| key_char(c))
}

/// `value`: 1 to 256 printable ASCII characters but `,` and `=`, not ending
/// in a space.
fn valid_value(v: &[u8]) -> bool {
    (1..=256).contains(&v.len())
        && v.iter()
            .all(|&c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
        && v[v.len() - 1] != b' '
}

/// Optional white space of HTTP: spaces and tabs.
fn is_ows(c: &u8) -> bool {
    matches!(c, b' ' | b'\t')
}

fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|c| !is_ows(c)).unwrap_or(s.len());
    let end = s.iter().rposition(|c| !is_ows(c)).map_or(start, |e| e + 1);
    &s[start..end]
}

/// Checks a `tracestate` header by the Level 2 grammar: comma-separated
/// `key=value` members around optional spaces and tabs, empty members
/// allowed, at most 32 members. A key given twice is not a reason to refuse
/// the header (Level 2 lets a vendor pass duplicates on as they are or drop
/// one): the header travels on unchanged, duplicates included.
pub fn validate_tracestate(s: &[u8]) -> Result<(), InvalidTraceContext> {
    if s.len() > TRACESTATE_MAX_BYTES {
        return Err(InvalidTraceContext);
    }
    let mut members = 0;
    for member in s.split(|&c| c == b',') {
        let m = trim_ows(member);
        if m.is_empty() {
            continue;
        }
        let eq = m
            .iter()
            .position(|&c| c == b'=')
            .ok_or(InvalidTraceContext)?;
        let (key, value) = (&m[..eq], &m[eq + 1..]);
        if !valid_key(key) || !valid_value(value) {
            return Err(InvalidTraceContext);
        }
        members += 1;
        if members > TRACESTATE_MAX_MEMBERS {
            return Err(InvalidTraceContext);
        }
    }
    Ok(())
}

/// The trace context an incoming request carries, from its header fields as
/// a transport received them (names in any case, values untrimmed, in
/// order): what W3C Trace Context asks a receiver to do.
///
/// - `traceparent`: exactly one field, its value with the optional white
///   space around it trimmed, valid; else none (a new trace starts). Two
///   `traceparent` fields are none, whatever they hold.
/// - `tracestate`: only with a valid `traceparent`. Every `tracestate` field
///   is trimmed and the non-empty ones are combined in their order with
///   commas, as HTTP combines repeated fields; the result is kept only if it
///   is valid as a whole, else dropped (the `traceparent` stays).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Incoming {
    pub traceparent: Option<TraceParent>,
    pub tracestate: Option<Vec<u8>>,
}

/// See [`Incoming`]. Headers other than the two are ignored.
pub fn incoming<'a>(fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Incoming {
    let mut parents = 0;
    let mut parent: &[u8] = &[];
    let mut state: Vec<u8> = Vec::new();
    for (name, value) in fields {
        if name.eq_ignore_ascii_case(b"traceparent") {
            parents += 1;
            parent = value;
        } else if name.eq_ignore_ascii_case(b"tracestate") {
            let v = trim_ows(value);
            if !v.is_empty() && state.len() <= TRACESTATE_MAX_BYTES {
                if !state.is_empty() {
                    state.push(b',');
                }
                state.extend_from_slice(v);
            }
        }
    }
    let traceparent = match parents {
        1 => parse_traceparent(trim_ows(parent)).ok(),
        _ => None,
    };
    let tracestate = traceparent
        .and(Some(state))
        .filter(|s| !s.is_empty() && validate_tracestate(s).is_ok());
    Incoming {
        traceparent,
        tracestate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn traceparent_round_trip() {
        let h = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp = parse_traceparent(h).unwrap();
        assert_eq!(tp.flags, 1);
        assert_eq!(&format_traceparent(&tp), h);
    }

    #[test]
    fn headers_past_their_limits_are_refused_unscanned() {
        let mut tp = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-".to_vec();
        tp.resize(TRACEPARENT_MAX_BYTES, b'x');
        assert!(parse_traceparent(&tp).is_ok());
        tp.push(b'x');
        assert_eq!(parse_traceparent(&tp), Err(InvalidTraceContext));
        // the longest header the grammar allows passes
        let member = |i: usize| format!("k{i:03}{}={}", "a".repeat(252), "v".repeat(256));
        let longest: Vec<String> = (0..32).map(member).collect();
        let longest = longest.join(",");
        assert!(longest.len() > 16_000);
        assert_eq!(validate_tracestate(longest.as_bytes()), Ok(()));
        assert_eq!(
            validate_tracestate(&vec![b','; TRACESTATE_MAX_BYTES + 1]),
            Err(InvalidTraceContext)
        );
    }

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
