//! The shared JSON-RPC vectors (`tests/vectors/jsonrpc.json`, read by EUnit
//! too): every example of the specification's examples section and the
//! limits, through the core's codec and a server of the examples' methods.

use erlmcp_flow_core::rpc::codec::{
    self, Decoded, ErrorObject, INVALID_PARAMS, Item, Limits, METHOD_NOT_FOUND, Message,
};
use serde_json::{Value, json};

/// The methods of the specification's examples.
fn call(method: &str, params: Option<&Value>) -> Result<Value, ErrorObject> {
    let invalid = || ErrorObject::new(INVALID_PARAMS, "Invalid params");
    match (method, params) {
        ("subtract", Some(Value::Array(a))) => match (
            a.first().and_then(Value::as_i64),
            a.get(1).and_then(Value::as_i64),
        ) {
            (Some(x), Some(y)) if a.len() == 2 => Ok(json!(x - y)),
            _ => Err(invalid()),
        },
        ("subtract", Some(Value::Object(m))) => match (
            m.get("minuend").and_then(Value::as_i64),
            m.get("subtrahend").and_then(Value::as_i64),
        ) {
            (Some(x), Some(y)) => Ok(json!(x - y)),
            _ => Err(invalid()),
        },
        ("subtract", _) => Err(invalid()),
        ("sum", Some(Value::Array(a))) => a
            .iter()
            .map(Value::as_i64)
            .sum::<Option<i64>>()
            .map(|s| json!(s))
            .ok_or_else(invalid),
        ("get_data", _) => Ok(json!(["hello", 5])),
        _ => Err(ErrorObject::new(METHOD_NOT_FOUND, "Method not found")),
    }
}

fn answer(item: &Item) -> Option<String> {
    match item {
        Ok(Message::Request { id, method, params }) => {
            let params = params.as_ref().map(|p| p.to_value());
            Some(match call(method, params.as_ref()) {
                Ok(result) => codec::response_json(id, Ok(&result.to_string())),
                Err(e) => codec::response_json(id, Err(&e)),
            })
        }
        Ok(Message::Notification { .. } | Message::Response { .. }) => None,
        Err(r) => Some(codec::rejection_json(r)),
    }
}

/// What the server sends back for one message, or nothing.
fn serve(bytes: &[u8], limits: &Limits) -> Option<String> {
    match codec::decode(bytes, limits) {
        Decoded::Single(item) => answer(&item),
        Decoded::Batch(items) => {
            let out: Vec<String> = items.iter().filter_map(answer).collect();
            (!out.is_empty()).then(|| codec::batch_json(&out))
        }
    }
}

#[test]
fn the_shared_vectors() {
    let text = std::fs::read_to_string("tests/vectors/jsonrpc.json").unwrap();
    let vectors: Value = serde_json::from_str(&text).unwrap();
    let cases = vectors["cases"].as_array().unwrap();
    assert!(cases.len() >= 28);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let limits = match case.get("limits") {
            Some(l) => Limits {
                max_message_bytes: l["max_message_bytes"].as_u64().unwrap() as usize,
                max_depth: l["max_depth"].as_u64().unwrap() as usize,
                max_batch: l["max_batch"].as_u64().unwrap() as usize,
            },
            None => Limits::default(),
        };
        let got = serve(case["request"].as_str().unwrap().as_bytes(), &limits)
            .map(|b| serde_json::from_str::<Value>(&b).unwrap());
        let want = match &case["response"] {
            Value::Null => None,
            v => Some(v.clone()),
        };
        assert_eq!(got, want, "{name}");
    }
}

/// A 1 KiB request decoded and its response encoded (criterion measures it;
/// this checks the message is what the bench thinks it is).
#[test]
fn a_kilobyte_request_round_trips() {
    let params: Vec<Value> = (0..52).map(|i| json!({"k": i, "v": "abcdef"})).collect();
    let req = codec::request_json(
        Some(&codec::Id::from(1)),
        "flow.route_task",
        Some(&json!({"task": params}).to_string()),
    );
    assert!((900..1300).contains(&req.len()), "{}", req.len());
    let Decoded::Single(Ok(Message::Request { id, params, .. })) =
        codec::decode(req.as_bytes(), &Limits::default())
    else {
        panic!()
    };
    let resp = codec::response_json(&id, Ok(params.unwrap().text()));
    assert!(resp.len() > 900);
}
