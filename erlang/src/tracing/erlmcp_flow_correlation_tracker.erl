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
%% An agent that calls further services opens a child span per call under
%% its attempt with `start_span/2' (`erlmcp_flow_agent:start_span/2' from a
%% `TaskCtx'), sends `format_traceparent(ChildCtx)' and the context's
%% `tracestate' with the call, and closes it with `end_span/2'; a child span
%% whose holder dies first closes as `abandoned'. Child spans are in the
%% trace's chain under their attempt, and exported like the others.
%%
%% Header parsing follows W3C Trace Context Level 2: version `00' is exactly
%% 55 characters; a higher version is read by its first four fields;
%% version `ff', upper-case hex, all-zero ids and bad lengths or separators
%% are refused with `{error, invalid_trace_context}'. The flags passed on
%% are `sampled' and `random' as received (the reserved ones are zeroed);
%% a trace erlmcp_flow starts has both set (its trace ids are random).
%% `tracestate' follows the Level 2 key grammar, and a key given twice is
%% kept as it came. `incoming/1' reads a request's header fields the way an
%% HTTP receiver must.
-module(erlmcp_flow_correlation_tracker).

%% API
-export([generate_trace_id/0]).
-export([generate_span_id/0]).
-export([parse_traceparent/1]).
-export([format_traceparent/1]).
-export([trace_headers/1]).
-export([validate_tracestate/1]).
-export([get_trace_chain/1]).
-export([lookup/1]).
-export([sweep/0]).
-export([start_span/2]).
-export([end_span/2]).
-export([incoming/1]).

-export_type([context/0, traceparent/0, span/0]).

%% The context an agent receives with a task.
%% A child span's context also holds the span itself (`span'), for
%% `end_span/2'.
-type context() :: #{trace_id := binary(), span_id := binary(), trace_flags := 0..255,
                     parent_span_id => binary(), tracestate => binary(),
                     agent_id => binary(),
                     span => erlmcp_flow_nif:task_span()}.
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

%% @doc The W3C headers of an agent's context, as they go with a task to an
%% agent in another process or language: `traceparent', and `tracestate'
%% when the context carries one.
-spec trace_headers(map()) -> #{traceparent := binary() | {error, invalid_trace_context},
                                tracestate => binary()}.
trace_headers(Ctx) ->
    Headers = #{traceparent => format_traceparent(Ctx)},
    case Ctx of
        #{tracestate := TS} -> Headers#{tracestate => TS};
        #{} -> Headers
    end.

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

%% @doc Opens a span under `Ctx''s span, for a call the agent makes: `Ctx' is
%% the trace context an agent received (or an `erlmcp_flow_agent' `TaskCtx',
%% or another child's context); `Name' (a binary, cut to 128 bytes) says what
%% the call is. Returns the child's context: the same trace, tracestate and
%% flags, its own `span_id', `Ctx''s span as `parent_span_id'. Send
%% `format_traceparent(ChildCtx)' with the call; close it with `end_span/2'.
-spec start_span(context() | #{trace := context(), atom() => term()}, binary()) ->
          context() | {error, not_started | {badarg, trace_context | name}}.
start_span(#{trace := #{} = Ctx}, Name) ->
    start_span(Ctx, Name);
start_span(#{trace_id := TraceId, span_id := SpanId, trace_flags := Flags} = Ctx, Name)
  when is_binary(Name) ->
    case erlmcp_flow_registry:with_router(
           fun(Router) ->
                   erlmcp_flow_nif:span_child_start(Router, TraceId, SpanId, Flags, Name)
           end) of
        {ok, ChildId, ChildFlags, Span} ->
            Child = #{trace_id => TraceId, span_id => ChildId, parent_span_id => SpanId,
                      trace_flags => ChildFlags, span => Span},
            case Ctx of
                #{tracestate := TS} -> Child#{tracestate => TS};
                #{} -> Child
            end;
        {error, not_started} = E ->
            E;
        {error, {badarg, _}} ->
            {error, {badarg, trace_context}}
    end;
start_span(#{trace_id := _, span_id := _, trace_flags := _}, _Name) ->
    {error, {badarg, name}};
start_span(_Ctx, _Name) ->
    {error, {badarg, trace_context}}.

%% @doc Closes a child span opened by `start_span/2' with the call's outcome,
%% `ok' or `error'; a span closes once (`{error, already_ended}' after).
-spec end_span(context(), ok | error) ->
          ok | {error, already_ended | {badarg, span | outcome}}.
end_span(#{span := Span}, Outcome) when Outcome =:= ok; Outcome =:= error ->
    case erlmcp_flow_nif:span_end(Span, Outcome, undefined) of
        ok -> ok;
        {error, already_ended} = E -> E;
        {error, {badarg, _}} -> {error, {badarg, span}}
    end;
end_span(#{span := _}, _Outcome) ->
    {error, {badarg, outcome}};
end_span(_Ctx, _Outcome) ->
    {error, {badarg, span}}.

%% @doc The trace context a request carries, from its header fields as a
%% transport received them (`{Name, Value}', binaries or strings, names in
%% any case, values untrimmed, in order), read as W3C Trace Context asks a
%% receiver to: the requirements to give `erlmcp_flow:execute/3' or
%% `route_task/2'. `traceparent' only when exactly one valid one came (its
%% optional white space trimmed; passed on as version 00); `tracestate' only
%% with it, every field trimmed and the non-empty ones combined in order
%% with commas (as HTTP combines repeated fields), kept only if valid as a
%% whole. Anything else is none: the task starts a new trace.
-spec incoming([{binary() | string(), binary() | string()}]) ->
          #{traceparent => binary(), tracestate => binary()} | {error, {badarg, headers}}.
incoming(Headers) when is_list(Headers) ->
    try lists:map(fun({N, V}) -> {to_binary(N), to_binary(V)} end, Headers) of
        Fields ->
            case erlmcp_flow_nif:trace_incoming(Fields) of
                #{} = Found -> Found;
                {error, _} -> {error, {badarg, headers}}
            end
    catch
        error:_ -> {error, {badarg, headers}}
    end;
incoming(_) ->
    {error, {badarg, headers}}.

to_binary(B) when is_binary(B) -> B;
to_binary(L) when is_list(L) -> list_to_binary(L).
