//! JSON-RPC 2.0 messages: decoding with limits, and encoding.
//!
//! A message is checked against its limits before it is parsed: its size
//! first, then how deep its arrays and objects nest (one pass over the
//! bytes), so that no input allocates more than its own size in values or
//! recurses past `max_depth`. Each item of a batch is then checked against
//! the specification on its own: a bad item gets its error response, the
//! others are served.
//!
//! An item is read in two steps: its members as raw JSON text (a scan, no
//! values built), then each member the item needs, as what it must be. So
//! a request's id is kept as the text it came as and echoed exactly, and a
//! member the server does not read costs a scan.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::FlowError;

/// Invalid JSON.
pub const PARSE_ERROR: i64 = -32700;
/// Not a valid request object (or an empty batch, or past a limit).
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// erlmcp's code for a message past the size limit.
pub const MESSAGE_TOO_LARGE: i64 = -32012;
/// erlmcp's code for a request that timed out.
pub const REQUEST_TIMEOUT: i64 = -32009;

/// What one message may hold (the `transports` configuration section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one message (a batch is one message).
    pub max_message_bytes: usize,
    /// Arrays and objects nested inside one another, the message's own included.
    pub max_depth: usize,
    /// Items of one batch.
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 1 << 20,
            max_depth: 64,
            max_batch: 100,
        }
    }
}

/// A request's id: echoed exactly as given. A number is kept as its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Id {
    Number(String),
    String(String),
    Null,
}

impl Id {
    /// The id of raw member text, if it is a string, a number or null.
    fn from_raw(raw: &RawValue) -> Option<Id> {
        let text = raw.get();
        match text.as_bytes().first()? {
            b'"' => serde_json::from_str(text).ok().map(Id::String),
            b'n' => Some(Id::Null),
            b'-' | b'0'..=b'9' => Some(Id::Number(text.to_string())),
            _ => None,
        }
    }

    /// An id from a number's text, if it is a JSON number.
    pub fn number(text: &str) -> Option<Id> {
        is_json_number(text).then(|| Id::Number(text.to_string()))
    }

    /// Its JSON text.
    pub fn to_json(&self) -> String {
        match self {
            Id::Number(n) => n.clone(),
            Id::String(s) => Value::String(s.clone()).to_string(),
            Id::Null => "null".into(),
        }
    }
}

impl From<i64> for Id {
    fn from(n: i64) -> Id {
        Id::Number(n.to_string())
    }
}

/// Whether `text` is one JSON number (RFC 8259's grammar).
pub fn is_json_number(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}

/// The error member of a response.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorObject {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl ErrorObject {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        ErrorObject {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("code".into(), Value::from(self.code));
        m.insert("message".into(), Value::String(self.message.clone()));
        if let Some(d) = &self.data {
            m.insert("data".into(), d.clone());
        }
        Value::Object(m)
    }
}

/// A member's JSON text, as it came (valid JSON): params and results stay
/// text until whoever needs them reads them (the NIF straight into Erlang
/// terms), so decoding a message builds no tree of values.
#[derive(Clone)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    pub fn text(&self) -> &str {
        self.0.get()
    }

    pub fn from_value(v: &Value) -> RawJson {
        // a `Value` always serializes
        RawJson(serde_json::value::to_raw_value(v).unwrap_or_else(|_| null_raw()))
    }

    /// The text as a `Value` (it is valid JSON; numbers past a float's
    /// range were refused when the message was read).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.text()).unwrap_or(Value::Null)
    }

    fn from_raw(raw: &RawValue) -> RawJson {
        RawJson(raw.to_owned())
    }
}

fn null_raw() -> Box<RawValue> {
    RawValue::from_string("null".into()).unwrap_or_else(|_| unreachable!("null is JSON"))
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.text() == other.text()
    }
}

impl std::fmt::Debug for RawJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text())
    }
}

/// One valid message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Request {
        id: Id,
        method: String,
        params: Option<RawJson>,
    },
    /// A request without an id: never answered.
    Notification {
        method: String,
        params: Option<RawJson>,
    },
    Response {
        id: Id,
        outcome: Result<RawJson, ErrorObject>,
    },
}

/// An item that is not a valid message, with the error response it gets:
/// its id when one could be read, else null.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub id: Id,
    pub error: ErrorObject,
}

pub type Item = Result<Message, Rejected>;

/// A decoded message: one item, or a batch of them. A message refused as a
/// whole (bad JSON, past a limit, an empty batch) is one rejected item.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Single(Item),
    Batch(Vec<Item>),
}

fn reject(code: i64, message: &str) -> Rejected {
    Rejected {
        id: Id::Null,
        error: ErrorObject::new(code, message),
    }
}

/// Whether `bytes` nests arrays and objects at most `max` deep (stopping as
/// soon as it goes past). Brackets inside strings do not count.
fn depth_within(bytes: &[u8], max: usize) -> bool {
    // nesting needs an opening bracket per level: with no more of them than
    // `max` in all, there is nothing to follow (a count the compiler
    // vectorizes, where the walk below goes byte by byte)
    let opening = bytes.iter().filter(|&&b| b == b'[' || b == b'{').count();
    if opening <= max {
        return true;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Whether `bytes` is within the size and depth limits (`max_batch`
/// unused), checked before any parse.
pub fn check_limits(bytes: &[u8], limits: &Limits) -> Result<(), FlowError> {
    if bytes.len() > limits.max_message_bytes {
        return Err(FlowError::MessageTooLarge);
    }
    if !depth_within(bytes, limits.max_depth) {
        return Err(FlowError::MessageTooDeep);
    }
    Ok(())
}

/// Any JSON value, within the size and depth limits.
pub fn decode_value(bytes: &[u8], limits: &Limits) -> Result<Value, FlowError> {
    check_limits(bytes, limits)?;
    serde_json::from_slice(bytes).map_err(|_| FlowError::ParseError)
}

/// A member present in an item, `null` included (an `Option` would read
/// `null` as absent, and `"id": null` is not a notification).
#[derive(Debug, Default)]
enum Member<'a> {
    #[default]
    Absent,
    Present(&'a RawValue),
}

impl<'de: 'a, 'a> Deserialize<'de> for Member<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(d).map(Member::Present)
    }
}

/// An item's members, as raw text.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    jsonrpc: Member<'a>,
    #[serde(borrow, default)]
    method: Member<'a>,
    #[serde(borrow, default)]
    id: Member<'a>,
    #[serde(borrow, default)]
    params: Member<'a>,
    #[serde(borrow, default)]
    result: Member<'a>,
    #[serde(borrow, default)]
    error: Member<'a>,
}

/// Decodes one message (one line of a stream, one HTTP body).
pub fn decode(bytes: &[u8], limits: &Limits) -> Decoded {
    if bytes.len() > limits.max_message_bytes {
        return Decoded::Single(Err(Rejected {
            id: Id::Null,
            error: ErrorObject::new(MESSAGE_TOO_LARGE, "Message too large").with_data(
                serde_json::json!({ "maxSize": limits.max_message_bytes, "size": bytes.len() }),
            ),
        }));
    }
    if !depth_within(bytes, limits.max_depth) {
        return Decoded::Single(Err(Rejected {
            id: Id::Null,
            error: ErrorObject::new(INVALID_REQUEST, "Invalid Request")
                .with_data(serde_json::json!({ "maxDepth": limits.max_depth })),
        }));
    }
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    // a single object is read in one scan, its members as raw text
    if first == Some(&b'{') {
        return Decoded::Single(match serde_json::from_slice::<Envelope>(bytes) {
            Ok(env) => item_envelope(env),
            Err(e) if e.is_data() => Err(reject(INVALID_REQUEST, "Invalid Request")),
            Err(_) => Err(reject(PARSE_ERROR, "Parse error")),
        });
    }
    if first != Some(&b'[') {
        return Decoded::Single(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => Err(reject(INVALID_REQUEST, "Invalid Request")),
                Err(_) => Err(reject(PARSE_ERROR, "Parse error")),
            },
        );
    }
    let items: Vec<&RawValue> = match serde_json::from_slice(bytes) {
        Ok(items) => items,
        Err(_) => return Decoded::Single(Err(reject(PARSE_ERROR, "Parse error"))),
    };
    if items.is_empty() {
        Decoded::Single(Err(reject(INVALID_REQUEST, "Invalid Request")))
    } else if items.len() > limits.max_batch {
        Decoded::Single(Err(Rejected {
            id: Id::Null,
            error: ErrorObject::new(INVALID_REQUEST, "Invalid Request")
                .with_data(serde_json::json!({ "maxBatch": limits.max_batch })),
        }))
    } else {
        Decoded::Batch(items.into_iter().map(item_raw).collect())
    }
}

/// One item of a batch (valid JSON) checked against the specification.
fn item_raw(raw: &RawValue) -> Item {
    if !raw.get().starts_with('{') {
        return Err(reject(INVALID_REQUEST, "Invalid Request"));
    }
    // duplicate members are refused as an invalid request
    match serde_json::from_str::<Envelope>(raw.get()) {
        Ok(env) => item_envelope(env),
        Err(_) => Err(reject(INVALID_REQUEST, "Invalid Request")),
    }
}

/// An item's members checked against the specification.
fn item_envelope(env: Envelope<'_>) -> Item {
    // the id, if one can be read, goes into the error of a bad item
    let id = match env.id {
        Member::Absent => None,
        Member::Present(r) => match Id::from_raw(r) {
            Some(id) => Some(id),
            None => return Err(reject(INVALID_REQUEST, "Invalid Request")),
        },
    };
    let invalid = |id: &Option<Id>| {
        Err(Rejected {
            id: id.clone().unwrap_or(Id::Null),
            error: ErrorObject::new(INVALID_REQUEST, "Invalid Request"),
        })
    };
    match env.jsonrpc {
        Member::Present(r) if r.get() == "\"2.0\"" => {}
        _ => return invalid(&id),
    }
    if let Member::Present(m) = env.method {
        let Ok(method) = serde_json::from_str::<String>(m.get()) else {
            return invalid(&id);
        };
        let params = match env.params {
            Member::Absent => None,
            Member::Present(p) if p.get().starts_with(['{', '[']) => Some(RawJson::from_raw(p)),
            Member::Present(_) => return invalid(&id),
        };
        return Ok(match id {
            Some(id) => Message::Request { id, method, params },
            None => Message::Notification { method, params },
        });
    }
    let Some(id) = id else {
        return invalid(&None);
    };
    match (env.result, env.error) {
        (Member::Present(r), Member::Absent) => Ok(Message::Response {
            id,
            outcome: Ok(RawJson::from_raw(r)),
        }),
        (Member::Absent, Member::Present(e)) => {
            let e = serde_json::from_str::<Value>(e.get()).unwrap_or(Value::Null);
            let code = e.get("code").and_then(Value::as_i64);
            let message = e.get("message").and_then(Value::as_str);
            match (code, message) {
                (Some(code), Some(message)) => Ok(Message::Response {
                    id,
                    outcome: Err(ErrorObject {
                        code,
                        message: message.to_string(),
                        data: e.get("data").cloned(),
                    }),
                }),
                _ => invalid(&Some(id)),
            }
        }
        _ => invalid(&Some(id)),
    }
}

/// A response's JSON text.
/// A response's JSON text, the result given as JSON text.
pub fn response_json(id: &Id, outcome: Result<&str, &ErrorObject>) -> String {
    let id = id.to_json();
    match outcome {
        Ok(result) => {
            let mut out = String::with_capacity(result.len() + id.len() + 32);
            out.push_str("{\"jsonrpc\":\"2.0\",\"result\":");
            out.push_str(result);
            out.push_str(",\"id\":");
            out.push_str(&id);
            out.push('}');
            out
        }
        Err(e) => format!(
            "{{\"jsonrpc\":\"2.0\",\"error\":{},\"id\":{id}}}",
            e.to_value()
        ),
    }
}

/// A request's (with an id) or a notification's (without) JSON text.
pub fn request_json(id: Option<&Id>, method: &str, params: Option<&str>) -> String {
    let mut out = format!(
        "{{\"jsonrpc\":\"2.0\",\"method\":{}",
        Value::String(method.into())
    );
    if let Some(p) = params {
        out.push_str(&format!(",\"params\":{p}"));
    }
    if let Some(id) = id {
        out.push_str(&format!(",\"id\":{}", id.to_json()));
    }
    out.push('}');
    out
}

/// The response a rejected item gets.
pub fn rejection_json(r: &Rejected) -> String {
    response_json(&r.id, Err(&r.error))
}

/// Several messages' texts as one batch.
pub fn batch_json(items: &[String]) -> String {
    format!("[{}]", items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn single(text: &str) -> Item {
        match decode(text.as_bytes(), &Limits::default()) {
            Decoded::Single(i) => i,
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn requests_notifications_and_responses() {
        assert_eq!(
            single(r#"{"jsonrpc":"2.0","method":"m","params":[1],"id":"x"}"#),
            Ok(Message::Request {
                id: Id::String("x".into()),
                method: "m".into(),
                params: Some(RawJson::from_value(&serde_json::json!([1]))),
            })
        );
        assert_eq!(
            single(r#"{"jsonrpc":"2.0","method":"m"}"#),
            Ok(Message::Notification {
                method: "m".into(),
                params: None
            })
        );
        assert_eq!(
            single(r#"{"jsonrpc":"2.0","result":null,"id":7}"#),
            Ok(Message::Response {
                id: Id::Number("7".into()),
                outcome: Ok(RawJson::from_value(&Value::Null))
            })
        );
        let e =
            single(r#"{"jsonrpc":"2.0","error":{"code":-1,"message":"no","data":3},"id":null}"#);
        assert_eq!(
            e,
            Ok(Message::Response {
                id: Id::Null,
                outcome: Err(ErrorObject::new(-1, "no").with_data(3.into()))
            })
        );
    }

    #[test]
    fn ids_are_echoed_exactly() {
        for id in [
            "1",
            "-0.50",
            "1E400",
            "\"\"",
            "\"\\u00e9\"",
            "null",
            "12345678901234567890",
        ] {
            let text = format!(r#"{{"jsonrpc":"2.0","method":"m","id":{id}}}"#);
            let Ok(Message::Request { id: got, .. }) = single(&text) else {
                panic!("{text}")
            };
            let back = response_json(&got, Ok("null"));
            // a string comes back as the same string, a number as its text
            let want = if id.starts_with('"') {
                serde_json::from_str::<Value>(id).unwrap().to_string()
            } else {
                id.to_string()
            };
            assert!(back.ends_with(&format!(",\"id\":{want}}}")), "{back}");
        }
        assert!(is_json_number("-0.5e+3") && is_json_number("0"));
        for bad in ["01", "1.", "+1", "-", "1e", "0x1", ""] {
            assert!(!is_json_number(bad), "{bad}");
        }
    }

    #[test]
    fn bad_items_are_refused_with_the_id_when_readable() {
        let bad = |t: &str| single(t).unwrap_err();
        assert_eq!(
            bad(r#"{"jsonrpc":"1.0","method":"m","id":3}"#).id,
            Id::from(3)
        );
        assert_eq!(
            bad(r#"{"jsonrpc":"2.0","method":"m","method":"n"}"#)
                .error
                .code,
            INVALID_REQUEST
        );
        assert_eq!(
            bad(r#"{"jsonrpc":"2.0","method":1,"id":3}"#).error.code,
            INVALID_REQUEST
        );
        assert_eq!(
            bad(r#"{"jsonrpc":"2.0","method":"m","id":{}}"#).id,
            Id::Null
        );
        assert_eq!(
            bad(r#"{"jsonrpc":"2.0","method":"m","params":"p"}"#)
                .error
                .code,
            INVALID_REQUEST
        );
        assert_eq!(
            bad(r#"{"jsonrpc":"2.0","result":1,"error":{},"id":1}"#)
                .error
                .code,
            INVALID_REQUEST
        );
        assert_eq!(bad(r#"{"jsonrpc":"2.0","result":1}"#).id, Id::Null);
        assert_eq!(bad("5").error.code, INVALID_REQUEST);
        assert_eq!(bad("{").error.code, PARSE_ERROR);
        assert_eq!(bad("[]").error.code, INVALID_REQUEST);
    }

    #[test]
    fn limits_are_errors() {
        let l = Limits {
            max_message_bytes: 64,
            max_depth: 3,
            max_batch: 2,
        };
        let big = format!(r#"{{"jsonrpc":"2.0","method":"{}"}}"#, "m".repeat(100));
        let Decoded::Single(Err(r)) = decode(big.as_bytes(), &l) else {
            panic!()
        };
        assert_eq!(r.error.code, MESSAGE_TOO_LARGE);
        assert_eq!(r.error.data.unwrap()["maxSize"], 64);
        let deep = r#"{"jsonrpc":"2.0","method":"m","params":[[[1]]]}"#;
        let Decoded::Single(Err(r)) = decode(deep.as_bytes(), &l) else {
            panic!()
        };
        assert_eq!(r.error.data.unwrap()["maxDepth"], 3);
        // brackets inside strings do not nest
        let flat = r#"{"jsonrpc":"2.0","method":"[[[[","params":["]]"]}"#;
        assert!(matches!(
            decode(flat.as_bytes(), &l),
            Decoded::Single(Ok(_))
        ));
        let batch = r#"[{"jsonrpc":"2.0","method":"m"},1,2]"#;
        let Decoded::Single(Err(r)) = decode(batch.as_bytes(), &l) else {
            panic!()
        };
        assert_eq!(r.error.data.unwrap()["maxBatch"], 2);
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes, &Limits::default());
        }

        #[test]
        fn requests_round_trip(params in json_value(), id in any::<i64>(), method in ".{0,16}") {
            let params = match params {
                p @ (Value::Array(_) | Value::Object(_)) => Some(p),
                _ => None,
            };
            let id = Id::from(id);
            let text = request_json(Some(&id), &method, params.as_ref().map(|p| p.to_string()).as_deref());
            prop_assert_eq!(
                decode(text.as_bytes(), &Limits { max_message_bytes: usize::MAX, max_depth: 1000, max_batch: 100 }),
                Decoded::Single(Ok(Message::Request { id, method, params: params.map(|p| RawJson::from_value(&p)) }))
            );
        }

        #[test]
        fn nested_values_stay_within_the_depth_limit(v in json_value()) {
            let text = request_json(None, "m", Some(&Value::Array(vec![v]).to_string()));
            let l = Limits { max_depth: 4, ..Limits::default() };
            if let Decoded::Single(Ok(Message::Notification { params: Some(p), .. })) = decode(text.as_bytes(), &l) {
                let p = p.to_value();
                fn depth(v: &Value) -> usize {
                    match v {
                        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
                        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
                        _ => 0,
                    }
                }
                prop_assert!(depth(&p) < 4);
            }
        }
    }
}
