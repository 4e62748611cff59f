%% A PropEr stateful model of the circuit breaker, run against the real NIF
%% through `erlmcp_flow_circuit_breaker' on a manual clock: random sequences
%% of calls asked for and recorded (the probes held by this process, as the
%% module holds them), calls asked for by processes that die holding them,
%% clock moves and resets,
%% every answer, state and probe count checked against the model.
-module(erlmcp_flow_breaker_statem).

-include_lib("proper/include/proper.hrl").

-export([prop_breaker/0]).
-export([initial_state/0, command/1, precondition/2, next_state/3, postcondition/3]).
-export([allow/0, record/2, allow_and_die/0, advance/1, reset/0, state/0]).

-define(MIN_REQUESTS, 4).
-define(FAILURE_THRESHOLD, 3).
-define(TIMEOUT_US, 1000000).
-define(HALF_OPEN_MAX, 2).
-define(SUCCESSES, 2).
-define(SLOW_US, 2000).
-define(WINDOW, 6).
-define(ID, <<"a">>).

router_opts() ->
    #{clock => manual, min_requests => ?MIN_REQUESTS, failure_threshold => ?FAILURE_THRESHOLD,
      failure_rate_threshold => 0.5, breaker_timeout_ms => ?TIMEOUT_US div 1000,
      half_open_max_requests => ?HALF_OPEN_MAX, success_threshold => ?SUCCESSES,
      slow_call_threshold_ms => ?SLOW_US div 1000, window_type => count, window_size => ?WINDOW}.

prop_breaker() ->
    ?FORALL(Cmds, proper_statem:commands(?MODULE),
            begin
                {ok, R} = erlmcp_flow_nif:router_new(router_opts()),
                ok = erlmcp_flow_nif:agent_insert(R, ?ID, self(), [<<"x">>], agent, 1),
                put(breaker_router, R),
                {History, State, Result} = proper_statem:run_commands(?MODULE, Cmds),
                erase(breaker_router),
                erase({erlmcp_flow_circuit_breaker, ?ID}),
                ?WHENFAIL(io:format("History: ~p~nState: ~p~nResult: ~p~n",
                                    [History, State, Result]),
                          aggregate(proper_statem:command_names(Cmds), Result =:= ok))
            end).

%% The system under test.
router() -> get(breaker_router).
allow() -> erlmcp_flow_circuit_breaker:allow(router(), ?ID).
record(Outcome, LatencyUs) -> erlmcp_flow_circuit_breaker:record(router(), ?ID, Outcome, LatencyUs).
%% Another process asks for a call and dies without recording it; its probe,
%% if it got one, goes with its heap.
allow_and_die() ->
    R = router(),
    {_, M} = spawn_monitor(fun() -> exit(erlmcp_flow_circuit_breaker:allow(R, ?ID)) end),
    receive {'DOWN', M, process, _, Answer} -> Answer end.
advance(Us) -> erlmcp_flow_nif:clock_advance(router(), Us).
reset() -> erlmcp_flow_nif:breaker_reset(router(), ?ID).
%% The state and the probes out (looking turns a due breaker half-open and
%% opens one with an overdue probe, one step).
state() ->
    {State, Probes, _} = erlmcp_flow_nif:breaker_state(router(), ?ID),
    {State, Probes}.

%% The model: the breaker's state, the half-open period (bumped whenever one
%% ends or begins, and on reset), and the probes this process holds.
initial_state() ->
    #{now => 0, state => {closed, []}, period => 0, next => 0, held => []}.

command(_S) ->
    frequency([{4, {call, ?MODULE, allow, []}},
               {6, {call, ?MODULE, record, [oneof([ok, error]), choose(0, 3000)]}},
               {2, {call, ?MODULE, allow_and_die, []}},
               {2, {call, ?MODULE, advance, [oneof([1000, 500000, 1000000, 2000000])]}},
               {1, {call, ?MODULE, reset, []}},
               {2, {call, ?MODULE, state, []}}]).

precondition(_S, _Call) ->
    true.

next_state(S, _Result, {call, ?MODULE, allow, []}) ->
    element(2, allow_model(S));
next_state(#{held := Held} = S, _Result, {call, ?MODULE, record, [Outcome, Latency]}) ->
    Failed = Outcome =:= error orelse Latency >= ?SLOW_US,
    case Held of
        [P | Rest] -> record_model(S#{held := Rest}, P, Failed);
        [] -> record_model(S, call, Failed)
    end;
next_state(#{held := Held} = S, _Result, {call, ?MODULE, allow_and_die, []}) ->
    case allow_model(S) of
        {allow, #{held := Held1} = S1} when length(Held1) > length(Held) ->
            {probe, Period, Id} = lists:last(Held1),
            settle(S1#{held := Held}, Period, Id);
        {_, S1} ->
            S1
    end;
next_state(#{now := Now} = S, _Result, {call, ?MODULE, advance, [Us]}) ->
    S#{now := Now + Us};
next_state(S, _Result, {call, ?MODULE, reset, []}) ->
    enter(S, {closed, []});
next_state(S, _Result, {call, ?MODULE, state, []}) ->
    step(S).

postcondition(S, {call, ?MODULE, allow, []}, Result) ->
    Result =:= element(1, allow_model(S));
postcondition(_S, {call, ?MODULE, record, _}, Result) ->
    Result =:= ok;
postcondition(S, {call, ?MODULE, allow_and_die, []}, Result) ->
    Result =:= element(1, allow_model(S));
postcondition(_S, {call, ?MODULE, advance, _}, Result) ->
    element(1, Result) =:= ok;
postcondition(_S, {call, ?MODULE, reset, []}, Result) ->
    element(1, Result) =:= ok;
postcondition(S, {call, ?MODULE, state, []}, Result) ->
    S1 = step(S),
    Result =:= {element(1, maps:get(state, S1)), model_probes(S1)}.

%% Asking for a call: due -> half-open; an overdue probe opens the breaker
%% again (refused); otherwise a plain call when closed, a probe when
%% half-open with room.
allow_model(S0) ->
    S = due(S0),
    case S of
        #{state := {closed, _}, held := Held} ->
            {allow, S#{held := Held}};
        #{state := {open, _}} ->
            {deny, S};
        #{state := {half_open, Out, Succ}, period := P, next := Id, held := Held, now := Now} ->
            case overdue(S) of
                true -> {deny, open(S)};
                false when length(Out) < ?HALF_OPEN_MAX ->
                    {allow, S#{state := {half_open, Out ++ [{Id, Now}], Succ}, next := Id + 1,
                               held := Held ++ [{probe, P, Id}]}};
                false -> {deny, S}
            end
    end.

record_model(#{state := {closed, W0}} = S, call, Failed) ->
    W = lists:sublist([Failed | W0], ?WINDOW),
    Calls = length(W),
    Failures = length([F || F <- W, F]),
    case Calls >= ?MIN_REQUESTS andalso Failures >= ?FAILURE_THRESHOLD
        andalso Failures >= 0.5 * Calls of
        true -> open(S);
        false -> S#{state := {closed, W}}
    end;
record_model(#{state := {half_open, Out, Succ}, period := P} = S, {probe, P, Id}, Failed) ->
    case lists:keymember(Id, 1, Out) of
        false -> S;
        true when Failed -> open(S);
        true when Succ + 1 >= ?SUCCESSES -> enter(S, {closed, []});
        true -> S#{state := {half_open, lists:keydelete(Id, 1, Out), Succ + 1}}
    end;
record_model(S, _Permit, _Failed) ->
    S.

settle(#{state := {half_open, Out, Succ}, period := P} = S, P, Id) ->
    S#{state := {half_open, lists:keydelete(Id, 1, Out), Succ}};
settle(S, _Period, _Id) ->
    S.

enter(#{period := P} = S, State) ->
    S#{state := State, period := P + 1}.

open(#{now := Now} = S) ->
    enter(S, {open, Now + ?TIMEOUT_US}).

overdue(#{state := {half_open, Out, _}, now := Now}) ->
    lists:any(fun({_, At}) -> Now >= At + ?TIMEOUT_US end, Out);
overdue(_) ->
    false.

%% An open breaker past its timeout is half-open for whoever looks next.
due(#{now := Now, state := {open, Until}} = S) when Now >= Until ->
    enter(S, {half_open, [], 0});
due(S) ->
    S.

%% What `state/0' does: one step, due or overdue.
step(#{state := {open, _}} = S) -> due(S);
step(#{state := {half_open, _, _}} = S) ->
    case overdue(S) of
        true -> open(S);
        false -> S
    end;
step(S) -> S.

model_probes(#{state := {half_open, Out, _}}) -> length(Out);
model_probes(_) -> 0.
