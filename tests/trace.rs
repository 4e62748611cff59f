//! W3C Trace Context against the shared vectors (EUnit reads the same files),
//! and the parser's grammar for any input.

use erlmcp_flow_core::tracing::context::{
    format_traceparent, incoming, parse_traceparent, valid_id, validate_tracestate,
};
use proptest::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct ParentCase {
    header: String,
    valid: bool,
    #[serde(default)]
    version: u8,
    #[serde(default)]
    trace_id: String,
    #[serde(default)]
    parent_id: String,
    #[serde(default)]
    flags: u8,
    #[serde(default)]
    formatted: String,
}

#[derive(Deserialize)]
struct StateCase {
    header: String,
    valid: bool,
}

/// A request of the W3C validation harness: its header fields, and what a
/// receiver passes on.
#[derive(Deserialize)]
struct IncomingCase {
    case: String,
    fields: Vec<(String, String)>,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

#[derive(Deserialize)]
struct Vectors<T> {
    cases: Vec<T>,
    #[serde(default)]
    incoming: Vec<IncomingCase>,
}

fn read<T: for<'de> Deserialize<'de>>(name: &str) -> Vectors<T> {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str::<Vectors<T>>(&std::fs::read_to_string(path).expect("vectors"))
        .expect("vector JSON")
}

fn vectors<T: for<'de> Deserialize<'de>>(name: &str) -> Vec<T> {
    read(name).cases
}

/// Every request of the harness, as the transport hands its fields over.
#[test]
fn harness_requests() {
    let mut all = read::<ParentCase>("traceparent.json").incoming;
    all.extend(read::<StateCase>("tracestate.json").incoming);
    assert!(all.len() >= 80, "{}", all.len());
    for c in all {
        let got = incoming(c.fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        let tp = got.traceparent.map(|tp| format_traceparent(&tp).to_vec());
        assert_eq!(tp, c.traceparent.map(String::into_bytes), "{}", c.case);
        assert_eq!(
            got.tracestate,
            c.tracestate.map(String::into_bytes),
            "{}",
            c.case
        );
    }
}

#[test]
fn traceparent_vectors() {
    let cases: Vec<ParentCase> = vectors("traceparent.json");
    assert!(cases.len() > 20);
    for c in cases {
        let got = parse_traceparent(c.header.as_bytes());
        assert_eq!(got.is_ok(), c.valid, "{}", c.header);
        if let Ok(tp) = got {
            assert_eq!(tp.version, c.version);
            assert_eq!(tp.trace_id, c.trace_id.as_bytes());
            assert_eq!(tp.parent_id, c.parent_id.as_bytes());
            assert_eq!(tp.flags, c.flags);
            assert_eq!(&format_traceparent(&tp)[..], c.formatted.as_bytes());
        }
    }
}

#[test]
fn tracestate_vectors() {
    let cases: Vec<StateCase> = vectors("tracestate.json");
    for c in cases {
        assert_eq!(
            validate_tracestate(c.header.as_bytes()).is_ok(),
            c.valid,
            "{}",
            c.header
        );
    }
}

fn hex(n: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![Just('0'), Just('7'), Just('a'), Just('f'), Just('3')],
        n,
    )
    .prop_map(|v| v.into_iter().collect())
}

proptest! {
    /// Whatever the bytes, parsing never panics, and what it accepts formats
    /// back to a header it accepts again, with the same ids.
    #[test]
    fn parsing_any_bytes_is_safe(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        if let Ok(tp) = parse_traceparent(&bytes) {
            let again = parse_traceparent(&format_traceparent(&tp)).unwrap();
            prop_assert_eq!(again.trace_id, tp.trace_id);
            prop_assert_eq!(again.parent_id, tp.parent_id);
        }
        let _ = validate_tracestate(&bytes);
    }

    /// Every well-formed version-00 header with non-zero ids is accepted and
    /// formats back to itself.
    #[test]
    fn well_formed_headers_round_trip(t in hex(32), p in hex(16), f in hex(2)) {
        prop_assume!(valid_id(t.as_bytes(), 32) && valid_id(p.as_bytes(), 16));
        let h = format!("00-{t}-{p}-{f}");
        let tp = parse_traceparent(h.as_bytes()).unwrap();
        prop_assert_eq!(&format_traceparent(&tp)[..], h.as_bytes());
    }
}
