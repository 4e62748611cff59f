%% @doc Per-agent circuit breakers, as seen from Erlang.
%%
%% The breakers live in the Rust core (their state is a byte every routing
%% decision reads); routing uses them by itself: an agent whose breaker is open
%% is not chosen, a half-open one gets at most `half_open_max_requests' probes
%% at once, and every routed outcome is recorded. These functions are for
%% calls made outside `erlmcp_flow:execute/2,3' and for operators.
%%
%% Closed -> open when, over the sliding window (`window_type' count or time,
%% `window_size' calls or ms), at least `min_requests' calls were seen, at
%% least `failure_threshold' failed and the failure rate is at least
%% `failure_rate_threshold'; calls slower than `slow_call_threshold' count as
%% failures. Open -> half_open after `timeout' ms. Half-open ->
%% closed after `success_threshold' successful probes; one failed probe opens
%% it again, and so does a probe not recorded within `timeout'. Every
%% transition is counted (`erlmcp_flow:stats/0') and logged, a warning when a
%% breaker opens.
%%
%% A probe belongs to the process that `allow_request/1' granted it to and to
%% the half-open period it was granted in: that process's next
%% `record_result/2,3' for the agent records it. A probe whose process dies
%% unrecorded gives its slot back; one still unrecorded when the period ends
%% (closed, opened again, reset) counts for nothing. A result recorded
%% without a probe in hand is a plain call: it counts while the breaker is
%% closed and is ignored otherwise.
-module(erlmcp_flow_circuit_breaker).

%% API
-export([allow_request/1]).
-export([record_result/2]).
-export([record_result/3]).
-export([state/1]).
-export([reset/1]).
-export([log_transition/2]).
-export([allow/2]).
-export([record/4]).

%% A process holds at most this many probes of one agent; older ones are
%% dropped (and with them their slots, if their period is still on).
-define(MAX_HELD, 64).

%% @doc Asks agent `AgentId''s breaker for a call. In half-open state an
%% allowed call is one of the probes, held by the calling process until it
%% records the result.
-spec allow_request(erlmcp_flow:agent_id()) ->
          allow | deny | {error, not_found | not_started | {badarg, atom()}}.
allow_request(AgentId) ->
    erlmcp_flow_registry:with_router(fun(Router) -> allow(Router, AgentId) end).

%% @private `allow_request/1' on a given router.
-spec allow(erlmcp_flow_nif:router(), erlmcp_flow:agent_id()) ->
          allow | deny | {error, not_found | {badarg, atom()}}.
allow(Router, AgentId) ->
    case erlmcp_flow_nif:breaker_allow(Router, AgentId) of
        {allow, call, T} ->
            log_transition(AgentId, T),
            allow;
        {allow, Probe, T} ->
            log_transition(AgentId, T),
            hold(AgentId, Probe),
            allow;
        {deny, T} ->
            log_transition(AgentId, T),
            deny;
        {error, _} = E ->
            E
    end.

%% @equiv record_result(AgentId, Result, 0)
-spec record_result(erlmcp_flow:agent_id(), {ok, term()} | {error, term()}) ->
          ok | {error, not_found | not_started | {badarg, atom()}}.
record_result(AgentId, Result) ->
    record_result(AgentId, Result, 0).

%% @doc Records the result of a call allowed by `allow_request/1', with its
%% latency in microseconds (a slow success counts as a failure when
%% `slow_call_threshold' is set).
-spec record_result(erlmcp_flow:agent_id(), {ok, term()} | {error, term()}, non_neg_integer()) ->
          ok | {error, not_found | not_started | {badarg, atom()}}.
record_result(AgentId, Result, LatencyUs) ->
    Outcome = case Result of
                  {ok, _} -> ok;
                  {error, _} -> error;
                  _ -> bad
              end,
    case Outcome of
        bad -> {error, {badarg, result}};
        _ -> erlmcp_flow_registry:with_router(
               fun(Router) -> record(Router, AgentId, Outcome, LatencyUs) end)
    end.

%% @private `record_result/3' on a given router, with `ok | error'.
-spec record(erlmcp_flow_nif:router(), erlmcp_flow:agent_id(), ok | error, term()) ->
          ok | {error, not_found | {badarg, atom()}}.
record(Router, AgentId, Outcome, LatencyUs) ->
    case is_integer(LatencyUs) andalso LatencyUs >= 0 of
        false ->
            {error, {badarg, microseconds}};
        true ->
            case erlmcp_flow_nif:breaker_record(Router, AgentId, take(AgentId), Outcome,
                                                LatencyUs) of
                {ok, T} -> log_transition(AgentId, T);
                {error, already_recorded} -> ok;
                {error, _} = E -> E
            end
    end.

%% @doc The breaker's state; an open breaker past its timeout reads (and
%% turns) half-open.
-spec state(erlmcp_flow:agent_id()) ->
          erlmcp_flow_nif:breaker_state() | {error, not_found | not_started | {badarg, atom()}}.
state(AgentId) ->
    case erlmcp_flow_registry:with_router(
           fun(Router) -> erlmcp_flow_nif:breaker_state(Router, AgentId) end) of
        {State, _Probes, T} ->
            log_transition(AgentId, T),
            State;
        {error, _} = E ->
            E
    end.

%% @doc Closes the breaker and empties its window.
-spec reset(erlmcp_flow:agent_id()) -> ok | {error, not_found | not_started | {badarg, atom()}}.
reset(AgentId) ->
    case erlmcp_flow_registry:with_router(
           fun(Router) -> erlmcp_flow_nif:breaker_reset(Router, AgentId) end) of
        {ok, T} -> log_transition(AgentId, T);
        {error, _} = E -> E
    end.

%% The probes this process holds, oldest first, per agent.
hold(AgentId, Probe) ->
    Held = case get({?MODULE, AgentId}) of
               undefined -> [];
               L -> L
           end,
    put({?MODULE, AgentId}, lists:sublist(Held ++ [Probe], max(1, length(Held) + 2 - ?MAX_HELD),
                                          ?MAX_HELD)),
    ok.

%% The oldest probe this process holds for the agent, or `call'.
take(AgentId) ->
    case get({?MODULE, AgentId}) of
        [Probe] -> erase({?MODULE, AgentId}), Probe;
        [Probe | Rest] -> put({?MODULE, AgentId}, Rest), Probe;
        _ -> call
    end.

%% @private Reports a transition the core reported: the telemetry event
%% `[erlmcp_flow, breaker, transition]', and a log line (a warning when a
%% breaker opens, a notice otherwise).
-spec log_transition(erlmcp_flow:agent_id(), none | erlmcp_flow_nif:transition()) -> ok.
log_transition(_AgentId, none) ->
    ok;
log_transition(AgentId, {breaker, From, To}) ->
    erlmcp_flow_telemetry:execute([breaker, transition],
                                  #{monotonic_time => erlang:monotonic_time()},
                                  #{agent_id => AgentId, from => From, to => To}),
    case To of
        open ->
            logger:warning("erlmcp_flow: circuit breaker of agent ~ts opened (was ~s)",
                           [AgentId, From]);
        _ ->
            logger:notice("erlmcp_flow: circuit breaker of agent ~ts ~s -> ~s", [AgentId, From, To])
    end.
