//! Finished spans as OpenTelemetry OTLP/JSON: one `ExportTraceServiceRequest`
//! per batch, ready to append to a file or POST to a collector's
//! `/v1/traces`. Ids travel as lowercase hex and 64-bit integers as strings,
//! as the OTLP JSON mapping says.

use serde_json::{Value, json};

use crate::tracing::correlation::{Span, SpanKind, SpanOutcome};

/// OTLP span kind INTERNAL (a task, or a span an agent opened: what it does
/// is the agent's to say in its name) and CLIENT (an attempt, a call to an
/// agent).
const KIND_INTERNAL: u8 = 1;
const KIND_CLIENT: u8 = 3;
/// OTLP status codes.
const STATUS_OK: u8 = 1;
const STATUS_ERROR: u8 = 2;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn attribute(key: &str, value: Value) -> Value {
    json!({ "key": key, "value": value })
}

fn span_json(span: &Span, unix_ns: &dyn Fn(u64) -> u64) -> Value {
    let mut attributes = vec![attribute(
        "erlmcp_flow.kind",
        json!({ "stringValue": span.kind.name() }),
    )];
    if span.kind != SpanKind::Child {
        attributes.push(attribute(
            "erlmcp_flow.attempt",
            json!({ "intValue": span.attempt.to_string() }),
        ));
    }
    if !span.agent_id.is_empty() {
        attributes.push(attribute(
            "erlmcp_flow.agent_id",
            json!({ "stringValue": text(&span.agent_id) }),
        ));
    }
    if !span.summary.is_empty() && span.kind != SpanKind::Child {
        attributes.push(attribute(
            "erlmcp_flow.task",
            json!({ "stringValue": text(&span.summary) }),
        ));
    }
    let name = match span.kind {
        SpanKind::Task => "erlmcp_flow.task".to_owned(),
        SpanKind::Attempt => "erlmcp_flow.attempt".to_owned(),
        SpanKind::Child if span.summary.is_empty() => "erlmcp_flow.child".to_owned(),
        SpanKind::Child => text(&span.summary),
    };
    let ok = span.outcome == SpanOutcome::Ok;
    let mut out = json!({
        "traceId": text(&span.trace_id),
        "spanId": text(&span.span_id),
        "name": name,
        "kind": if span.kind == SpanKind::Attempt { KIND_CLIENT } else { KIND_INTERNAL },
        "startTimeUnixNano": unix_ns(span.start_us).to_string(),
        "endTimeUnixNano": unix_ns(span.end_us).to_string(),
        "attributes": attributes,
        "status": if ok {
            json!({ "code": STATUS_OK })
        } else {
            json!({ "code": STATUS_ERROR, "message": span.outcome.name() })
        },
    });
    if let Some(p) = &span.parent_span_id {
        out["parentSpanId"] = Value::String(text(p));
    }
    out
}

/// One export request for `spans`, from service `service`. `unix_ns` turns
/// the store's clock times into Unix nanoseconds.
pub fn encode(spans: &[Span], service: &str, unix_ns: &dyn Fn(u64) -> u64) -> Vec<u8> {
    let doc = json!({
        "resourceSpans": [{
            "resource": {
                "attributes": [attribute("service.name", json!({ "stringValue": service }))]
            },
            "scopeSpans": [{
                "scope": { "name": "erlmcp_flow", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans.iter().map(|s| span_json(s, unix_ns)).collect::<Vec<_>>(),
            }]
        }]
    });
    serde_json::to_vec(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_an_export_request() {
        let s = Span {
            trace_id: *b"4bf92f3577b34da6a3ce929d0e0e4736",
            span_id: *b"00f067aa0ba902b7",
            parent_span_id: Some(*b"1111111111111111"),
            agent_id: b"agent-1".as_slice().into(),
            summary: b"review".as_slice().into(),
            start_us: 10,
            end_us: 25,
            outcome: SpanOutcome::Timeout,
            attempt: 2,
            kind: SpanKind::Attempt,
        };
        let bytes = encode(&[s], "svc", &|us| 1_000_000_000 + us * 1000);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let rs = &v["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"][0]["value"]["stringValue"],
            "svc"
        );
        let span = &rs["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span["parentSpanId"], "1111111111111111");
        assert_eq!(span["startTimeUnixNano"], "1000010000");
        assert_eq!(span["endTimeUnixNano"], "1000025000");
        assert_eq!(span["kind"], 3);
        assert_eq!(span["status"]["code"], 2);
        assert_eq!(span["status"]["message"], "timeout");
    }
}
