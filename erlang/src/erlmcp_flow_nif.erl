%% @private
%% @doc The raw NIF of erlmcp_flow, loaded from `priv/erlmcp_flow_nif.so'.
%%
%% Only the application's own modules call these functions; they validate
%% arguments first, but every function here also refuses garbage itself with
%% `{error, {badarg, What}}' and never crashes the node.
-module(erlmcp_flow_nif).

-on_load(init/0).

%% API
-export([router_new/1]).
-export([clock_advance/2]).
-export([agent_insert/6]).
-export([agent_insert_many/2]).
-export([agent_remove/2]).
-export([agent_remove_many/2]).
-export([router_stats/1]).
-export([router_memory/1]).
-export([ring_build/1]).
-export([jsonrpc_decode/4, jsonrpc_decode_dirty/4, jsonrpc_encode/1, jsonrpc_encode_dirty/1,
         json_encode/1, json_encode_dirty/1, json_decode/3]).
-export([agent_stats/2]).
-export([decide/8]).
-export([task_start/9]).
-export([task_complete/2]).
-export([has_capacity/2]).
-export([has_capacity/4]).
-export([complete/2]).
-export([lease_p95/1]).
-export([explain/3]).
-export([q_table/1]).
-export([q_save/2]).
-export([q_load/2]).
-export([q_reset/1]).
-export([td_update/5]).
-export([reward/4]).
-export([breaker_allow/2]).
-export([breaker_record/5]).
-export([breaker_state/2]).
-export([breaker_reset/2]).
-export([generate_trace_id/0]).
-export([generate_span_id/0]).
-export([parse_traceparent/1]).
-export([format_traceparent/3]).
-export([validate_tracestate/1]).
-export([span_start/3]).
-export([span_end/3]).
-export([span_child_start/5]).
-export([trace_incoming/1]).
-export([trace_chain/2]).
-export([recent_traces/2]).
-export([span_lookup/2]).
-export([correlation_sweep/1]).
-export([export_batch/3]).
-export([core_memory/0]).
-export([release_snapshot_cache/0]).
-export([phi_new/1, phi_heartbeat/2, phi_resume/2, phi_value/2]).
-export([vote_key/1, vote_sign/2, vote_sign_dirty/2, vote_verify/3, vote_verify_dirty/3,
         replay_guard/1, replay_check/3]).

-export_type([router/0, lease/0, probe/0, outcome/0, router_opts/0, state/0, transition/0,
              breaker_state/0, span/0, span_request/0, task_span/0]).

-nifs([router_new/1, ring_build/1, clock_advance/2, agent_insert/6, agent_insert_many/2, agent_remove/2, agent_remove_many/2, router_stats/1, router_memory/1,
       jsonrpc_decode/4, jsonrpc_decode_dirty/4, jsonrpc_encode/1, jsonrpc_encode_dirty/1,
       json_encode/1, json_encode_dirty/1, json_decode/3,
       agent_stats/2, decide/8, task_start/9, task_complete/2, has_capacity/2, has_capacity/4, complete/2, lease_p95/1, explain/3, q_table/1, q_save/2, q_load/2,
       q_reset/1, td_update/5, reward/4, breaker_allow/2, breaker_record/5, breaker_state/2,
       breaker_reset/2, generate_trace_id/0, generate_span_id/0, parse_traceparent/1,
       format_traceparent/3, validate_tracestate/1, span_start/3, span_end/3,
       span_child_start/5, trace_incoming/1, trace_chain/2, recent_traces/2,
       span_lookup/2, correlation_sweep/1, export_batch/3, core_memory/0,
       release_snapshot_cache/0,
       phi_new/1, phi_heartbeat/2, phi_resume/2, phi_value/2,
       vote_key/1, vote_sign/2, vote_sign_dirty/2, vote_verify/3, vote_verify_dirty/3,
       replay_guard/1, replay_check/3]).

-type router() :: reference().
%% A vote: `{TraceId, SpanId, AgentId, Node, AnswerBytes, TimestampMs, Nonce}'.
-type vote() :: {binary(), binary(), binary(), binary(), binary(), non_neg_integer(),
                 non_neg_integer()}.
-export_type([vote/0]).
-type lease() :: reference().
%% A half-open probe granted by `breaker_allow/2', to record with `breaker_record/5'.
-type probe() :: reference().
-type task_span() :: reference().
-type outcome() :: ok | error | rejected | timeout | down | abandoned.
%% A normal-scheduler call's input past its bound: the `_dirty' variant takes it.
-type dirty_only() :: {error, {dirty_only, pos_integer()}}.
-type badarg() :: {error, {badarg, atom()}}.
-type router_opts() :: #{clock => system | manual,
                         alpha => number(), gamma => number(), epsilon => number(),
                         epsilon_min => number(), epsilon_decay => number(),
                         epsilon_schedule => exponential | linear | cosine,
                         softmax_temperature => number(), fast_threshold_ms => number(),
                         slow_threshold_ms => number(), task_classes => pos_integer(),
                         max_concurrent => pos_integer(), consistent_hash_vnodes => pos_integer(),
                         hash_balance_factor => number() | infinity, ewma_decay_ms => number(),
                         sample_above => pos_integer() | infinity,
                         stale_after_ms => non_neg_integer(),
                         breaker_enabled => boolean(), failure_threshold => pos_integer(),
                         min_requests => pos_integer(), failure_rate_threshold => number(),
                         breaker_timeout_ms => pos_integer(),
                         half_open_max_requests => pos_integer(),
                         success_threshold => pos_integer(),
                         slow_call_threshold_ms => pos_integer() | infinity,
                         window_type => count | time, window_size => pos_integer(),
                         correlation_ttl_ms => pos_integer(),
                         correlation_max_entries => pos_integer(),
                         export_queue => non_neg_integer(), lazy_ring => boolean()}.
%% The span a decision opens for its attempt: a child of the task's span
%% (from `span_start/3'), with the attempt's number.
-type span_request() :: {task_span(), pos_integer()}.
-type span() :: #{trace_id := binary(), span_id := binary(),
                  parent_span_id := binary() | undefined, agent_id := binary() | undefined,
                  summary := binary(), start_us := non_neg_integer(),
                  end_us := non_neg_integer() | undefined,
                  outcome := open | ok | error | timeout | down | abandoned | failed,
                  attempt := non_neg_integer(), kind := task | attempt | child}.
-type state() :: {0..10, low | medium | high, fast | normal | slow, non_neg_integer()}.
-type breaker_state() :: closed | open | half_open.
-type transition() :: {breaker, breaker_state(), breaker_state()}.
-type model_error() :: {error, {truncated | bad_magic | unsupported_version | incompatible
                                | checksum | trailing_bytes | non_finite | not_regular
                                | too_large | io, string()}}.

-spec init() -> ok | {error, term()}.
init() ->
    erlang:load_nif(filename:join(priv_dir(), "erlmcp_flow_nif"), 0).

priv_dir() ->
    case code:priv_dir(erlmcp_flow) of
        {error, bad_name} ->
            %% Not loaded as an application (e.g. a bare -pa path): look
            %% beside the ebin directory this module came from.
            filename:join(filename:dirname(filename:dirname(code:which(?MODULE))), "priv");
        Dir ->
            Dir
    end.

-spec router_new(router_opts()) -> {ok, router()} | badarg().
router_new(_Opts) -> erlang:nif_error(nif_not_loaded).

%% Builds the consistent-hash ring of a router made with `lazy_ring => true'
%% (once; `ok' when it was built already), on a dirty scheduler: a
%% consistent-hash decision answers `{error, ring_not_built}' before.
-spec ring_build(router()) -> ok | badarg().
ring_build(_Router) -> erlang:nif_error(nif_not_loaded).

-spec clock_advance(router(), non_neg_integer()) ->
          {ok, non_neg_integer()} | {error, system_clock} | badarg().
clock_advance(_Router, _Us) -> erlang:nif_error(nif_not_loaded).

-spec agent_insert(router(), binary(), pid(), [binary()], agent | swarm, number()) ->
          ok | {error, already_registered} | badarg().
agent_insert(_Router, _Id, _Pid, _Caps, _Kind, _Weight) -> erlang:nif_error(nif_not_loaded).

%% @doc Adds every agent with one change of the table, or none of them on the
%% first bad spec or taken id.
-spec agent_insert_many(router(), [{binary(), pid(), [binary()], agent | swarm, number()}]) ->
          ok | {error, already_registered} | badarg().
agent_insert_many(_Router, _Specs) -> erlang:nif_error(nif_not_loaded).

-spec agent_remove(router(), binary()) -> ok | {error, not_found} | badarg().
agent_remove(_Router, _Id) -> erlang:nif_error(nif_not_loaded).

-spec agent_remove_many(router(), [binary()]) -> {ok, non_neg_integer()} | badarg().
agent_remove_many(_Router, _Ids) -> erlang:nif_error(nif_not_loaded).

-spec router_stats(router()) -> {ok, #{atom() => number()}} | badarg().
router_stats(_Router) -> erlang:nif_error(nif_not_loaded).

%% @doc What the agents, the agent table and the correlation store cost the
%% core, in bytes.
-spec router_memory(router()) ->
          {ok, #{agents := non_neg_integer(), agents_bytes := non_neg_integer(),
                 table_bytes := non_neg_integer(), spans := non_neg_integer(),
                 correlation_bytes := non_neg_integer()}} | badarg().
router_memory(_Router) -> erlang:nif_error(nif_not_loaded).

%% @doc Decodes one JSON-RPC message (see `erlmcp_flow_jsonrpc').
%% On a normal scheduler: a message past 16 KiB is `{error, {dirty_only,
%% 16384}}' (decode it with `jsonrpc_decode_dirty/4').
-spec jsonrpc_decode(binary(), pos_integer(), pos_integer(), pos_integer()) ->
          {single, erlmcp_flow_jsonrpc:item()} | {batch, [erlmcp_flow_jsonrpc:item()]}
        | dirty_only() | badarg().
jsonrpc_decode(_Bin, _MaxBytes, _MaxDepth, _MaxBatch) -> erlang:nif_error(nif_not_loaded).

%% @doc `jsonrpc_decode/4' on a dirty scheduler.
-spec jsonrpc_decode_dirty(binary(), pos_integer(), pos_integer(), pos_integer()) ->
          {single, erlmcp_flow_jsonrpc:item()} | {batch, [erlmcp_flow_jsonrpc:item()]} | badarg().
jsonrpc_decode_dirty(_Bin, _MaxBytes, _MaxDepth, _MaxBatch) -> erlang:nif_error(nif_not_loaded).

%% @doc Encodes one JSON-RPC message or batch.
%% On a normal scheduler: at most about 16 KiB of JSON, else `{error,
%% {dirty_only, 16384}}' (encode it with `jsonrpc_encode_dirty/1').
-spec jsonrpc_encode(term()) -> {ok, binary()} | {error, {unencodable, binary()}} | dirty_only().
jsonrpc_encode(_Message) -> erlang:nif_error(nif_not_loaded).

%% @doc Encodes a term as JSON.
-spec json_encode(term()) -> {ok, binary()} | {error, {unencodable, binary()}} | dirty_only().
json_encode(_Term) -> erlang:nif_error(nif_not_loaded).

%% @doc `jsonrpc_encode/1' on a dirty scheduler.
-spec jsonrpc_encode_dirty(term()) -> {ok, binary()} | {error, {unencodable, binary()}}.
jsonrpc_encode_dirty(_Message) -> erlang:nif_error(nif_not_loaded).

%% @doc `json_encode/1' on a dirty scheduler.
-spec json_encode_dirty(term()) -> {ok, binary()} | {error, {unencodable, binary()}}.
json_encode_dirty(_Term) -> erlang:nif_error(nif_not_loaded).

%% @doc Decodes JSON within a size and a depth.
-spec json_decode(binary(), pos_integer(), pos_integer()) ->
          {ok, term()} | {error, too_large | too_deep | parse_error} | badarg().
json_decode(_Bin, _MaxBytes, _MaxDepth) -> erlang:nif_error(nif_not_loaded).

-spec agent_stats(router(), binary()) -> {ok, map()} | {error, not_found} | badarg().
agent_stats(_Router, _Id) -> erlang:nif_error(nif_not_loaded).

-spec decide(router(), [binary()], atom(), binary() | undefined, binary() | undefined,
             [binary()], any | swarm | {any | swarm, any | local},
             span_request() | undefined) ->
          {ok, binary(), pid(), lease(), binary() | undefined, none | transition()}
        | {error, no_agents_available | overloaded | ring_not_built} | badarg().
decide(_Router, _Caps, _Strategy, _StickyKey, _TaskClass, _Exclude, _Kind, _Span) ->
    erlang:nif_error(nif_not_loaded).

%% `span_start/3' and the first attempt's `decide/8' in one call: the task's
%% span and the decision (whatever `decide/8' answers; the span stays open
%% when the decision failed).
-spec task_start(router(), binary() | undefined, binary(), [binary()], atom(),
                 binary() | undefined, binary() | undefined, [binary()],
                 any | swarm | {any | swarm, any | local}) ->
          {ok, binary(), binary(), 0..255, task_span(),
           {ok, binary(), pid(), lease(), binary() | undefined, none | transition()}
           | {error, term()}}
        | {error, invalid_trace_context} | badarg().
task_start(_Router, _Traceparent, _Summary, _Caps, _Strategy, _StickyKey, _TaskClass, _Exclude,
           _Kind) ->
    erlang:nif_error(nif_not_loaded).

%% `complete(Lease, ok)' and `span_end(Span, ok, AgentId)' of the lease's
%% agent in one call (the span ends, if it had not, even when the lease was
%% settled already).
-spec task_complete(lease(), task_span()) ->
          {ok, non_neg_integer()} | {ok, non_neg_integer(), transition()}
        | {error, already_settled} | badarg().
task_complete(_Lease, _Span) -> erlang:nif_error(nif_not_loaded).

-spec has_capacity(router(), [binary()]) -> boolean() | badarg().
has_capacity(_Router, _Caps) -> erlang:nif_error(nif_not_loaded).

%% @doc Whether a decision with `Caps', passing `Exclude' by, of `Kind' (as
%% `decide/8''s) would find an agent with room now; nothing is taken.
-spec has_capacity(router(), [binary()], [binary()], any | swarm | {any | swarm, any | local}) ->
          boolean() | badarg().
has_capacity(_Router, _Caps, _Exclude, _Kind) -> erlang:nif_error(nif_not_loaded).

-spec complete(lease(), outcome()) ->
          {ok, non_neg_integer()} | {ok, non_neg_integer(), transition()}
        | {error, already_settled} | badarg().
complete(_Lease, _Outcome) -> erlang:nif_error(nif_not_loaded).

%% The p95 latency (µs) of the lease's agent; `undefined' before its first outcome.
-spec lease_p95(lease()) -> non_neg_integer() | undefined | badarg().
lease_p95(_Lease) -> erlang:nif_error(nif_not_loaded).

-spec explain(router(), [binary()], binary() | undefined) -> [map()] | badarg().
explain(_Router, _Caps, _TaskClass) -> erlang:nif_error(nif_not_loaded).

-spec q_table(router()) -> #{binary() => #{state() => {float(), non_neg_integer()}}} | badarg().
q_table(_Router) -> erlang:nif_error(nif_not_loaded).

-spec q_save(router(), binary()) -> {ok, non_neg_integer()} | model_error() | badarg().
q_save(_Router, _Path) -> erlang:nif_error(nif_not_loaded).

-spec q_load(router(), binary()) ->
          {ok, none | {loaded, non_neg_integer(), non_neg_integer()}} | model_error() | badarg().
q_load(_Router, _Path) -> erlang:nif_error(nif_not_loaded).

-spec q_reset(router()) -> ok | badarg().
q_reset(_Router) -> erlang:nif_error(nif_not_loaded).

-spec td_update(number(), number(), number(), number(), number()) -> float() | badarg().
td_update(_Q, _Reward, _MaxNext, _Alpha, _Gamma) -> erlang:nif_error(nif_not_loaded).

-spec reward(number(), boolean(), number(), number()) -> float() | badarg().
reward(_LatencyUs, _Ok, _FastUs, _SlowUs) -> erlang:nif_error(nif_not_loaded).

-spec breaker_allow(router(), binary()) ->
          {allow, call | probe(), none | transition()} | {deny, none | transition()}
        | {error, not_found} | badarg().
breaker_allow(_Router, _Id) -> erlang:nif_error(nif_not_loaded).

-spec breaker_record(router(), binary(), call | probe(), ok | error, non_neg_integer()) ->
          {ok, none | transition()} | {error, not_found | already_recorded} | badarg().
breaker_record(_Router, _Id, _Permit, _Outcome, _LatencyUs) -> erlang:nif_error(nif_not_loaded).

-spec breaker_state(router(), binary()) ->
          {breaker_state(), non_neg_integer(), none | transition()} | {error, not_found} | badarg().
breaker_state(_Router, _Id) -> erlang:nif_error(nif_not_loaded).

-spec breaker_reset(router(), binary()) -> {ok, none | transition()} | {error, not_found} | badarg().
breaker_reset(_Router, _Id) -> erlang:nif_error(nif_not_loaded).

-spec generate_trace_id() -> binary().
generate_trace_id() -> erlang:nif_error(nif_not_loaded).

-spec generate_span_id() -> binary().
generate_span_id() -> erlang:nif_error(nif_not_loaded).

-spec parse_traceparent(term()) ->
          {ok, #{version := 0..254, trace_id := binary(), span_id := binary(),
                 trace_flags := 0..255}}
        | {error, invalid_trace_context}.
parse_traceparent(_Header) -> erlang:nif_error(nif_not_loaded).

-spec format_traceparent(term(), term(), term()) -> binary() | {error, invalid_trace_context}.
format_traceparent(_TraceId, _SpanId, _Flags) -> erlang:nif_error(nif_not_loaded).

-spec validate_tracestate(term()) -> ok | {error, invalid_trace_context}.
validate_tracestate(_Header) -> erlang:nif_error(nif_not_loaded).

%% Opens a task's span; the returned `task_span()' closes it as abandoned
%% when garbage collected before `span_end/3'.
-spec span_start(router(), binary() | undefined, binary()) ->
          {ok, binary(), binary(), 0..255, task_span()} | {error, invalid_trace_context}
        | badarg().
span_start(_Router, _Traceparent, _Summary) -> erlang:nif_error(nif_not_loaded).

-spec span_end(task_span(), ok | failed | rejected | error, binary() | undefined) ->
          ok | {error, already_ended} | badarg().
span_end(_Span, _Outcome, _AgentId) -> erlang:nif_error(nif_not_loaded).

%% Opens a span under `ParentSpanId' in `TraceId' (a child an agent opens
%% under its attempt); closed by `span_end/3', or as abandoned when garbage
%% collected first. Returns its id and the flags it passes on.
-spec span_child_start(router(), binary(), binary(), 0..255, binary()) ->
          {ok, binary(), 0..255, task_span()} | badarg().
span_child_start(_Router, _TraceId, _ParentSpanId, _Flags, _Name) ->
    erlang:nif_error(nif_not_loaded).

%% The `traceparent' (version 00) and `tracestate' a receiver passes on from
%% a request's header fields, each only when there is one.
-spec trace_incoming([{binary(), binary()}]) ->
          #{traceparent => binary(), tracestate => binary()} | badarg().
trace_incoming(_Fields) -> erlang:nif_error(nif_not_loaded).

-spec trace_chain(router(), binary()) -> [span()] | badarg().
trace_chain(_Router, _TraceId) -> erlang:nif_error(nif_not_loaded).

%% The traces of the tasks that finished last (at most 100), newest first.
-spec recent_traces(router(), non_neg_integer()) -> [binary()] | badarg().
recent_traces(_Router, _N) -> erlang:nif_error(nif_not_loaded).

-spec span_lookup(router(), binary()) -> {ok, span()} | {error, not_found} | badarg().
span_lookup(_Router, _SpanId) -> erlang:nif_error(nif_not_loaded).

-spec correlation_sweep(router()) -> {ok, non_neg_integer()} | badarg().
correlation_sweep(_Router) -> erlang:nif_error(nif_not_loaded).

-spec export_batch(router(), pos_integer(), binary()) ->
          {ok, non_neg_integer(), binary()} | badarg().
export_batch(_Router, _Max, _Service) -> erlang:nif_error(nif_not_loaded).

-spec core_memory() -> non_neg_integer().
core_memory() -> erlang:nif_error(nif_not_loaded).

-spec release_snapshot_cache() -> ok.
release_snapshot_cache() -> erlang:nif_error(nif_not_loaded).

%% The failure detector's estimate of one peer (a resource).
-spec phi_new(number()) -> reference() | badarg().
phi_new(_MinStdDevMs) -> erlang:nif_error(nif_not_loaded).

-spec phi_heartbeat(reference(), non_neg_integer()) -> ok | badarg().
phi_heartbeat(_Phi, _NowMs) -> erlang:nif_error(nif_not_loaded).

%% A heartbeat ending a silence judged an outage: not learned as an interval.
-spec phi_resume(reference(), non_neg_integer()) -> ok | badarg().
phi_resume(_Phi, _NowMs) -> erlang:nif_error(nif_not_loaded).

-spec phi_value(reference(), non_neg_integer()) -> {float(), non_neg_integer()} | badarg().
phi_value(_Phi, _NowMs) -> erlang:nif_error(nif_not_loaded).

%% The cluster's secret as an opaque resource.
-spec vote_key(binary()) -> {ok, reference()} | {error, weak_secret} | badarg().
vote_key(_Secret) -> erlang:nif_error(nif_not_loaded).

%% On a normal scheduler: an answer past 64 KiB (ids past 1 KiB) is
%% `{error, {dirty_only, 65536}}' (`vote_sign_dirty/2', `vote_verify_dirty/3').
-spec vote_sign(reference(), vote()) -> binary() | dirty_only() | badarg().
vote_sign(_Key, _Vote) -> erlang:nif_error(nif_not_loaded).

-spec vote_verify(reference(), vote(), binary()) ->
          ok | {error, bad_signature} | dirty_only() | badarg().
vote_verify(_Key, _Vote, _Signature) -> erlang:nif_error(nif_not_loaded).

-spec vote_sign_dirty(reference(), vote()) -> binary() | badarg().
vote_sign_dirty(_Key, _Vote) -> erlang:nif_error(nif_not_loaded).

-spec vote_verify_dirty(reference(), vote(), binary()) -> ok | {error, bad_signature} | badarg().
vote_verify_dirty(_Key, _Vote, _Signature) -> erlang:nif_error(nif_not_loaded).

-spec replay_guard(non_neg_integer()) -> reference() | badarg().
replay_guard(_WindowMs) -> erlang:nif_error(nif_not_loaded).

-spec replay_check(reference(), vote(), non_neg_integer()) ->
          ok | {error, stale | replayed} | badarg().
replay_check(_Guard, _Vote, _NowMs) -> erlang:nif_error(nif_not_loaded).
