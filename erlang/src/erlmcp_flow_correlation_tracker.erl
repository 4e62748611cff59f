%% @doc W3C Trace Context and the correlation store.
%%
%% Every task routed by erlmcp_flow belongs to a trace. The task has a span
%% (attempt 0) whose parent is the caller's span when `execute/3' or
%% `route_task/2' was given `Requirements#{traceparent => Header}', and each
%% attempt (the first, every retry, the swarm fallback) is a child span of
%% the task's span, opened by the decision that picked its agent and closed
%% by its completion. The agent receives the attempt's context: the same
%% trace id, the attempt's span id, the task's span id as `parent_span_id',
%% the trace flags and the caller's `tracestate', unchanged.
%%
%% The spans live in the Rust core's correlation store, sharded by trace id.
%% Its bounds come from the `correlation' configuration section: finished
%% spans older than `ttl_ms' are swept once a second, and past `max_entries'
%% an insert drops the oldest finished spans first; inserts never block and
%% never fail because of the bound.
%%
%% Header parsing follows the W3C Trace Context recommendation: version `00'
%% is exactly 55 characters; a higher version is read by its first four
%% fields; version `ff', upper-case hex, all-zero ids and bad lengths or
%% separators are refused with `{error, invalid_trace_context}'.
-module(erlmcp_flow_correlation_tracker).

%% API
-export([generate_trace_id/0]).
-export([generate_span_id/0]).
-export([parse_traceparent/1]).
-export([format_traceparent/1]).
-export([validate_tracestate/1]).
-export([get_trace_chain/1]).
-export([lookup/1]).
-export([sweep/0]).

-export_type([context/0, traceparent/0, span/0]).

%% The context an agent receives with a task.
-type context() :: #{trace_id := binary(), span_id := binary(), trace_flags := 0..255,
                     parent_span_id => binary(), tracestate => binary()}.
-type traceparent() :: #{version := 0..254, trace_id := binary(), span_id := binary(),
                         trace_flags := 0..255}.
-type span() :: erlmcp_flow_nif:span().

%% @doc A new trace id: a random UUID v4 as 32 lowercase hex digits.
-spec generate_trace_id() -> binary().
generate_trace_id() ->
    erlmcp_flow_nif:generate_trace_id().

%% @doc A new span id: 16 lowercase hex digits, never all zero.
-spec generate_span_id() -> binary().
generate_span_id() ->
    erlmcp_flow_nif:generate_span_id().

%% @doc Parses a `traceparent' header (a binary). `span_id' is the header's
%% parent-id field: the span of whoever sent it.
-spec parse_traceparent(term()) -> {ok, traceparent()} | {error, invalid_trace_context}.
parse_traceparent(Header) ->
    erlmcp_flow_nif:parse_traceparent(Header).

%% @doc The version `00' `traceparent' header of a context: a map with
%% `trace_id', `span_id' and `trace_flags' (other keys are ignored), such as
%% the one an agent receives or `parse_traceparent/1' returns.
-spec format_traceparent(term()) -> binary() | {error, invalid_trace_context}.
format_traceparent(#{trace_id := T, span_id := S, trace_flags := F}) ->
    erlmcp_flow_nif:format_traceparent(T, S, F);
format_traceparent(_) ->
    {error, invalid_trace_context}.

%% @doc Checks a `tracestate' header: at most 32 comma-separated `key=value'
%% members with the recommendation's grammar, no key twice. A valid header is
%% passed on to agents unchanged.
-spec validate_tracestate(term()) -> ok | {error, invalid_trace_context}.
validate_tracestate(Header) ->
    erlmcp_flow_nif:validate_tracestate(Header).

%% @doc The spans of a trace still in the store, in parent order: each span
%% after its parent, siblings by start time, spans whose parent is not in the
%% store (the task's span under a caller's span) first.
-spec get_trace_chain(binary()) -> {ok, [span()]} | {error, not_started | {badarg, trace_id}}.
get_trace_chain(TraceId) ->
    case erlmcp_flow_registry:with_router(
           fun(Router) -> erlmcp_flow_nif:trace_chain(Router, TraceId) end) of
        Spans when is_list(Spans) -> {ok, Spans};
        {error, not_started} = E -> E;
        {error, _} -> {error, {badarg, trace_id}}
    end.

%% @doc One span by its id.
-spec lookup(binary()) -> {ok, span()} | {error, not_found | not_started | {badarg, span_id}}.
lookup(SpanId) ->
    case erlmcp_flow_registry:with_router(
           fun(Router) -> erlmcp_flow_nif:span_lookup(Router, SpanId) end) of
        {ok, _} = Found -> Found;
        {error, not_found} = E -> E;
        {error, not_started} = E -> E;
        {error, {badarg, _}} -> {error, {badarg, span_id}}
    end.

%% @doc Drops the spans past the TTL now rather than at the next periodic
%% sweep; returns how many went.
-spec sweep() -> non_neg_integer() | {error, not_started}.
sweep() ->
    erlmcp_flow_registry:with_router(
      fun(Router) ->
              {ok, N} = erlmcp_flow_nif:correlation_sweep(Router),
              N
      end).
