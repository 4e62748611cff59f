%% A PropEr stateful model of the circuit breaker, run against the real NIF
%% on a manual clock: random sequences of calls, outcomes, clock moves and
%% resets, every answer and every state checked against the model.
-module(erlmcp_flow_breaker_statem).

-include_lib("proper/include/proper.hrl").

-export([prop_breaker/0]).
-export([initial_state/0, command/1, precondition/2, next_state/3, postcondition/3]).
-export([allow/0, record/2, advance/1, reset/0, state/0]).

-define(MIN_REQUESTS, 4).
-define(FAILURE_THRESHOLD, 3).
-define(TIMEOUT_US, 1000000).
-define(HALF_OPEN_MAX, 2).
-define(SUCCESSES, 2).
-define(SLOW_US, 2000).
-define(WINDOW, 6).

router_opts() ->
    #{clock => manual, min_requests => ?MIN_REQUESTS, failure_threshold => ?FAILURE_THRESHOLD,
      failure_rate_threshold => 0.5, breaker_timeout_ms => ?TIMEOUT_US div 1000,
      half_open_max_requests => ?HALF_OPEN_MAX, success_threshold => ?SUCCESSES,
      slow_call_threshold_ms => ?SLOW_US div 1000, window_type => count, window_size => ?WINDOW}.

prop_breaker() ->
    ?FORALL(Cmds, proper_statem:commands(?MODULE),
            begin
                {ok, R} = erlmcp_flow_nif:router_new(router_opts()),
                ok = erlmcp_flow_nif:agent_insert(R, <<"a">>, self(), [<<"x">>], agent, 1),
                put(breaker_router, R),
                {History, State, Result} = proper_statem:run_commands(?MODULE, Cmds),
                erase(breaker_router),
                ?WHENFAIL(io:format("History: ~p~nState: ~p~nResult: ~p~n",
                                    [History, State, Result]),
                          aggregate(proper_statem:command_names(Cmds), Result =:= ok))
            end).

%% The system under test, through the NIF.
router() -> get(breaker_router).
allow() -> element(1, erlmcp_flow_nif:breaker_allow(router(), <<"a">>)).
record(Outcome, LatencyUs) -> erlmcp_flow_nif:breaker_record(router(), <<"a">>, Outcome, LatencyUs).
advance(Us) -> erlmcp_flow_nif:clock_advance(router(), Us).
reset() -> erlmcp_flow_nif:breaker_reset(router(), <<"a">>).
state() -> element(1, erlmcp_flow_nif:breaker_state(router(), <<"a">>)).

%% The model.
initial_state() ->
    #{now => 0, state => {closed, []}}.

command(_S) ->
    frequency([{4, {call, ?MODULE, allow, []}},
               {6, {call, ?MODULE, record, [oneof([ok, error]), choose(0, 3000)]}},
               {2, {call, ?MODULE, advance, [oneof([1000, 500000, 1000000, 2000000])]}},
               {1, {call, ?MODULE, reset, []}},
               {1, {call, ?MODULE, state, []}}]).

precondition(_S, _Call) ->
    true.

next_state(S, _Result, {call, ?MODULE, allow, []}) ->
    case due(S) of
        #{state := {half_open, P, N}} = S1 when P < ?HALF_OPEN_MAX -> S1#{state := {half_open, P + 1, N}};
        S1 -> S1
    end;
next_state(#{now := Now} = S, _Result, {call, ?MODULE, record, [Outcome, Latency]}) ->
    Failed = Outcome =:= error orelse Latency >= ?SLOW_US,
    Open = {open, Now + ?TIMEOUT_US},
    case S of
        #{state := {closed, W0}} ->
            W = lists:sublist([Failed | W0], ?WINDOW),
            Calls = length(W),
            Failures = length([F || F <- W, F]),
            case Calls >= ?MIN_REQUESTS andalso Failures >= ?FAILURE_THRESHOLD
                andalso Failures >= 0.5 * Calls of
                true -> S#{state := Open};
                false -> S#{state := {closed, W}}
            end;
        #{state := {half_open, P, N}} ->
            case Failed of
                true -> S#{state := Open};
                false when N + 1 >= ?SUCCESSES -> S#{state := {closed, []}};
                false -> S#{state := {half_open, max(P - 1, 0), N + 1}}
            end;
        #{state := {open, _}} ->
            S
    end;
next_state(#{now := Now} = S, _Result, {call, ?MODULE, advance, [Us]}) ->
    S#{now := Now + Us};
next_state(S, _Result, {call, ?MODULE, reset, []}) ->
    S#{state := {closed, []}};
next_state(S, _Result, {call, ?MODULE, state, []}) ->
    due(S).

postcondition(S, {call, ?MODULE, allow, []}, Result) ->
    Expected = case due(S) of
                   #{state := {closed, _}} -> allow;
                   #{state := {open, _}} -> deny;
                   #{state := {half_open, P, _}} when P < ?HALF_OPEN_MAX -> allow;
                   #{state := {half_open, _, _}} -> deny
               end,
    Result =:= Expected;
postcondition(_S, {call, ?MODULE, record, _}, Result) ->
    element(1, Result) =:= ok;
postcondition(_S, {call, ?MODULE, advance, _}, Result) ->
    element(1, Result) =:= ok;
postcondition(_S, {call, ?MODULE, reset, []}, Result) ->
    element(1, Result) =:= ok;
postcondition(S, {call, ?MODULE, state, []}, Result) ->
    Result =:= element(1, maps:get(state, due(S))).

%% An open breaker past its timeout is half-open for whoever looks next.
due(#{now := Now, state := {open, Until}} = S) when Now >= Until ->
    S#{state := {half_open, 0, 0}};
due(S) ->
    S.
