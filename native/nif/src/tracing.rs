//! Trace context and the correlation store for Erlang.

use erlmcp_flow_core::FlowError;
use erlmcp_flow_core::tracing::context::{self as trace, TraceParent};
use erlmcp_flow_core::tracing::correlation::{Span, SpanKind, SpanOutcome};
use erlmcp_flow_core::tracing::otlp;
use rustler::types::tuple::make_tuple;
use rustler::{Atom, Binary, Encoder, Env, ResourceArc, Term};

use crate::atoms;
use crate::error::{NifError, NifOutcome, badarg, reply};
use crate::resources::{RouterResource, SpanResource, router_arg};
use crate::rng::with_rng;
use crate::terms::{binary_term, choice, nonempty_binary};
use erlmcp_flow_core::routing::router::OpenSpan;

fn invalid<'a>(env: Env<'a>) -> Term<'a> {
    NifError::InvalidTraceContext.encode(env)
}

/// A hex id argument of `N` lowercase digits, not all zero.
pub fn id_arg<const N: usize>(term: Term<'_>, what: &'static str) -> NifOutcome<[u8; N]> {
    let bin = Binary::from_term(term).map_err(|_| badarg(what))?;
    if !trace::valid_id(bin.as_slice(), N) {
        return Err(badarg(what));
    }
    let mut out = [0u8; N];
    out.copy_from_slice(bin.as_slice());
    Ok(out)
}

fn undefined_or<'a>(env: Env<'a>, bytes: Option<&[u8]>) -> Term<'a> {
    match bytes {
        Some(b) if !b.is_empty() => binary_term(env, b),
        _ => atoms::undefined().encode(env),
    }
}

fn outcome_atom(o: SpanOutcome) -> Atom {
    match o {
        SpanOutcome::Open => atoms::open(),
        SpanOutcome::Ok => atoms::ok(),
        SpanOutcome::Error => atoms::error(),
        SpanOutcome::Timeout => atoms::timeout(),
        SpanOutcome::Down => atoms::down(),
        SpanOutcome::Abandoned => atoms::abandoned(),
        SpanOutcome::Failed => atoms::failed(),
        SpanOutcome::Rejected => atoms::rejected(),
    }
}

fn span_term<'a>(env: Env<'a>, s: &Span) -> NifOutcome<Term<'a>> {
    let keys = [
        atoms::trace_id(),
        atoms::span_id(),
        atoms::parent_span_id(),
        atoms::agent_id(),
        atoms::summary(),
        atoms::start_us(),
        atoms::end_us(),
        atoms::outcome(),
        atoms::attempt(),
        atoms::kind(),
    ]
    .map(|a| a.encode(env));
    let values = [
        binary_term(env, &s.trace_id),
        binary_term(env, &s.span_id),
        undefined_or(env, s.parent_span_id.as_ref().map(|p| p.as_slice())),
        undefined_or(env, Some(&s.agent_id)),
        binary_term(env, &s.summary),
        s.start_us.encode(env),
        if s.outcome == SpanOutcome::Open {
            atoms::undefined().encode(env)
        } else {
            s.end_us.encode(env)
        },
        outcome_atom(s.outcome).encode(env),
        s.attempt.encode(env),
        match s.kind {
            SpanKind::Task => atoms::task(),
            SpanKind::Attempt => atoms::attempt(),
            SpanKind::Child => atoms::child(),
        }
        .encode(env),
    ];
    Term::map_from_term_arrays(env, &keys, &values).map_err(|_| badarg("span"))
}

/// `generate_trace_id() -> <<32 hex>>`: a random UUID v4.
#[rustler::nif]
fn generate_trace_id(env: Env<'_>) -> Term<'_> {
    binary_term(env, &with_rng(trace::generate_trace_id))
}

/// `generate_span_id() -> <<16 hex>>`, never all zero.
#[rustler::nif]
fn generate_span_id(env: Env<'_>) -> Term<'_> {
    binary_term(env, &with_rng(trace::generate_span_id))
}

/// `parse_traceparent(Header) -> {ok, #{version, trace_id, span_id, trace_flags}}
/// | {error, invalid_trace_context}`. `span_id` is the header's parent-id.
#[rustler::nif]
fn parse_traceparent<'a>(env: Env<'a>, header: Term<'a>) -> Term<'a> {
    let Ok(bin) = Binary::from_term(header) else {
        return invalid(env);
    };
    match trace::parse_traceparent(bin.as_slice()) {
        Ok(tp) => {
            let keys = [
                atoms::version(),
                atoms::trace_id(),
                atoms::span_id(),
                atoms::trace_flags(),
            ]
            .map(|a| a.encode(env));
            let values = [
                tp.version.encode(env),
                binary_term(env, &tp.trace_id),
                binary_term(env, &tp.parent_id),
                tp.flags.encode(env),
            ];
            match Term::map_from_term_arrays(env, &keys, &values) {
                Ok(m) => (atoms::ok(), m).encode(env),
                Err(_) => invalid(env),
            }
        }
        Err(_) => invalid(env),
    }
}

/// `format_traceparent(TraceId, SpanId, Flags) -> Header | {error, invalid_trace_context}`.
#[rustler::nif]
fn format_traceparent<'a>(
    env: Env<'a>,
    trace_id: Term<'a>,
    span_id: Term<'a>,
    flags: Term<'a>,
) -> Term<'a> {
    let parts = (
        id_arg::<32>(trace_id, "trace_id"),
        id_arg::<16>(span_id, "span_id"),
        // rustler's u8 decoding wraps 256 to 0: decode wider and check
        flags
            .decode::<u32>()
            .ok()
            .and_then(|f| u8::try_from(f).ok()),
    );
    match parts {
        (Ok(trace_id), Ok(parent_id), Some(flags)) => {
            let header = trace::format_traceparent(&TraceParent {
                version: 0,
                trace_id,
                parent_id,
                flags,
            });
            binary_term(env, &header)
        }
        _ => invalid(env),
    }
}

/// `validate_tracestate(Header) -> ok | {error, invalid_trace_context}`.
#[rustler::nif]
fn validate_tracestate<'a>(env: Env<'a>, header: Term<'a>) -> Term<'a> {
    match Binary::from_term(header).map(|b| trace::validate_tracestate(b.as_slice())) {
        Ok(Ok(())) => atoms::ok().encode(env),
        _ => invalid(env),
    }
}

/// A task's span opened under `traceparent` (`undefined`: a new trace);
/// `None` when the header is not a valid one.
pub fn open_task_span(
    r: &RouterResource,
    traceparent: Term<'_>,
    summary: Term<'_>,
) -> NifOutcome<Option<OpenSpan>> {
    let summary = Binary::from_term(summary).map_err(|_| badarg("summary"))?;
    let header = if Atom::from_term(traceparent).is_ok_and(|a| a == atoms::undefined()) {
        None
    } else {
        match Binary::from_term(traceparent) {
            Ok(b) => Some(b),
            Err(_) => return Ok(None),
        }
    };
    Ok(with_rng(|rng| {
        r.router.span_start(
            header.as_ref().map(|b| b.as_slice()),
            summary.as_slice(),
            rng,
        )
    })
    .ok())
}

/// A task's span as `span_start/3` and `task_start/9` answer it: its trace
/// id, its own id, the flags it passes on, and the resource that holds it.
pub fn task_span_terms(env: Env<'_>, span: OpenSpan) -> [Term<'_>; 4] {
    let tp = *span.context();
    [
        binary_term(env, &tp.trace_id),
        binary_term(env, &tp.parent_id),
        tp.flags.encode(env),
        ResourceArc::new(SpanResource { span }).encode(env),
    ]
}

/// `span_start(Router, Traceparent | undefined, Summary) ->
/// {ok, TraceId, SpanId, Flags, Span} | {error, invalid_trace_context}`.
#[rustler::nif]
fn span_start<'a>(
    env: Env<'a>,
    router: Term<'a>,
    traceparent: Term<'a>,
    summary: Term<'a>,
) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        Ok(match open_task_span(r, traceparent, summary)? {
            Some(span) => {
                let [trace_id, span_id, flags, resource] = task_span_terms(env, span);
                make_tuple(
                    env,
                    &[atoms::ok().encode(env), trace_id, span_id, flags, resource],
                )
            }
            None => invalid(env),
        })
    };
    reply(env, run())
}

/// `span_end(Span, ok | failed | rejected | error, AgentId | undefined) -> ok |
/// {error, already_ended}`.
#[rustler::nif]
fn span_end<'a>(env: Env<'a>, span: Term<'a>, outcome: Term<'a>, agent: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let span: &SpanResource = span.try_get_resource().ok_or_else(|| badarg("span"))?;
        let o = choice(
            outcome,
            &[
                (atoms::ok, SpanOutcome::Ok),
                (atoms::failed, SpanOutcome::Failed),
                (atoms::error, SpanOutcome::Error),
                (atoms::rejected, SpanOutcome::Rejected),
            ],
            "outcome",
        )?;
        let agent = if Atom::from_term(agent).is_ok_and(|a| a == atoms::undefined()) {
            None
        } else {
            Some(nonempty_binary(agent, "agent_id")?)
        };
        Ok(if span.span.end(o, agent) {
            atoms::ok().encode(env)
        } else {
            NifError::AlreadyEnded.encode(env)
        })
    };
    reply(env, run())
}

/// `span_child_start(Router, TraceId, ParentSpanId, Flags, Name) ->
/// {ok, SpanId, Flags, Span} | {error, {badarg, What}}`: a span under
/// `ParentSpanId` in `TraceId` (the context an agent received), ended with
/// `span_end/3`. The flags it passes on are `Flags`' known ones.
#[rustler::nif]
fn span_child_start<'a>(
    env: Env<'a>,
    router: Term<'a>,
    trace_id: Term<'a>,
    parent: Term<'a>,
    flags: Term<'a>,
    name: Term<'a>,
) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let trace_id = id_arg::<32>(trace_id, "trace_id")?;
        let parent_id = id_arg::<16>(parent, "span_id")?;
        let flags: u8 = flags.decode().map_err(|_| badarg("trace_flags"))?;
        let name = Binary::from_term(name).map_err(|_| badarg("name"))?;
        let parent = TraceParent {
            version: 0,
            trace_id,
            parent_id,
            flags,
        };
        let span = with_rng(|rng| r.router.child_span_start(&parent, name.as_slice(), rng))
            .map_err(|_| badarg("span_id"))?;
        let tp = *span.context();
        Ok((
            atoms::ok(),
            binary_term(env, &tp.parent_id),
            tp.flags,
            ResourceArc::new(SpanResource { span }),
        )
            .encode(env))
    };
    reply(env, run())
}

/// `trace_incoming([{Name, Value}]) -> #{traceparent => Header, tracestate =>
/// Header}`: the trace context of a request's header fields as W3C Trace
/// Context reads them (see `erlmcp_flow_core::tracing::context::incoming`);
/// each key only when there is one to pass on, the `traceparent` as version
/// `00`. Fields that are not `{binary(), binary()}` are `{error, {badarg,
/// headers}}`.
#[rustler::nif]
fn trace_incoming<'a>(env: Env<'a>, fields: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let list: Vec<(Binary, Binary)> = fields.decode().map_err(|_| badarg("headers"))?;
        let found = trace::incoming(list.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let mut keys = Vec::new();
        let mut values = Vec::new();
        if let Some(tp) = found.traceparent {
            keys.push(atoms::traceparent().encode(env));
            values.push(binary_term(env, &trace::format_traceparent(&tp)));
        }
        if let Some(ts) = found.tracestate {
            keys.push(atoms::tracestate().encode(env));
            values.push(binary_term(env, &ts));
        }
        Term::map_from_term_arrays(env, &keys, &values).map_err(|_| badarg("headers"))
    };
    reply(env, run())
}

/// `trace_chain(Router, TraceId) -> [Span]`, in parent order.
#[rustler::nif(schedule = "DirtyCpu")]
fn trace_chain<'a>(env: Env<'a>, router: Term<'a>, trace_id: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let t = id_arg::<32>(trace_id, "trace_id")?;
        let spans = r.router.shared().correlation().chain(&t);
        let terms = spans
            .iter()
            .map(|s| span_term(env, s))
            .collect::<NifOutcome<Vec<_>>>()?;
        Ok(terms.encode(env))
    };
    reply(env, run())
}

/// `recent_traces(Router, N) -> [TraceId]`: the traces of the `N` (at most
/// 100) tasks that finished last, newest first.
#[rustler::nif(schedule = "DirtyCpu")]
fn recent_traces<'a>(env: Env<'a>, router: Term<'a>, n: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let n = n.decode::<u32>().map_err(|_| badarg("n"))?;
        let ids = r.router.shared().correlation().recent_tasks(n as usize);
        Ok(ids
            .iter()
            .map(|t| binary_term(env, t))
            .collect::<Vec<_>>()
            .encode(env))
    };
    reply(env, run())
}

/// `span_lookup(Router, SpanId) -> {ok, Span} | {error, not_found}`.
#[rustler::nif(schedule = "DirtyCpu")]
fn span_lookup<'a>(env: Env<'a>, router: Term<'a>, span_id: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let s = id_arg::<16>(span_id, "span_id")?;
        match r.router.shared().correlation().lookup(&s) {
            Some(span) => Ok((atoms::ok(), span_term(env, &span)?).encode(env)),
            None => Err(NifError::Core(FlowError::NotFound)),
        }
    };
    reply(env, run())
}

/// `correlation_sweep(Router) -> {ok, Removed}`: drops spans past their TTL.
#[rustler::nif(schedule = "DirtyCpu")]
fn correlation_sweep<'a>(env: Env<'a>, router: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let now = r.router.clock().now_us();
        Ok((atoms::ok(), r.router.shared().correlation().sweep(now)).encode(env))
    };
    reply(env, run())
}

/// `export_batch(Router, Max, ServiceName) -> {ok, Count, Json}`: up to `Max`
/// finished spans as one OTLP/JSON export request (`<<>>` when none).
#[rustler::nif(schedule = "DirtyCpu")]
fn export_batch<'a>(env: Env<'a>, router: Term<'a>, max: Term<'a>, service: Term<'a>) -> Term<'a> {
    let run = || -> NifOutcome<Term<'a>> {
        let r = router_arg(router)?;
        let max: usize = max.decode().map_err(|_| badarg("max"))?;
        let service = Binary::from_term(service).map_err(|_| badarg("service"))?;
        let service = String::from_utf8_lossy(service.as_slice()).into_owned();
        let shared = r.router.shared();
        let spans = shared.correlation().drain_export(max);
        if spans.is_empty() {
            return Ok((atoms::ok(), 0, binary_term(env, b"")).encode(env));
        }
        let json = otlp::encode(&spans, &service, &|us| shared.unix_ns(us));
        Ok((atoms::ok(), spans.len(), binary_term(env, &json)).encode(env))
    };
    reply(env, run())
}
