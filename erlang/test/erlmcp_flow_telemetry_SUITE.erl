%% erlmcp_flow's telemetry events, where the telemetry library is on the code
%% path; skipped with the reason otherwise. telemetry is not shipped: put a
%% build of it on the path to run this suite, for example
%%
%%     ERL_LIBS=/path/to/dir/holding/telemetry rebar3 ct --suite erlmcp_flow_telemetry_SUITE
%%
%% A handler attached to every event (erlmcp_flow_telemetry:events/0) sends
%% what it sees to the test process; each case runs real agents and checks
%% the events, their measurements and their metadata.
-module(erlmcp_flow_telemetry_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([task_events/1, retried_task_events/1, failed_task_events/1, rejected_task_events/1,
         routed_task_events/1,
         error_meta_matches_events/1, breaker_transition_events/1, agent_events/1,
         crashing_handler/1, internal_error_is_an_exception_event/1]).
-export([handle_event/4]).

all() ->
    [task_events, retried_task_events, failed_task_events, rejected_task_events, routed_task_events,
     error_meta_matches_events, breaker_transition_events, agent_events, crashing_handler,
     internal_error_is_an_exception_event].

init_per_suite(Config) ->
    erlmcp_flow_test_util:start_optional(telemetry, Config).

end_per_suite(_Config) ->
    _ = application:stop(erlmcp_flow),
    _ = application:stop(telemetry),
    ok.

init_per_testcase(_Case, Config) ->
    _ = application:stop(erlmcp_flow),
    {ok, _} = application:ensure_all_started(erlmcp_flow),
    ok = telemetry:attach_many(?MODULE, erlmcp_flow_telemetry:events(), fun ?MODULE:handle_event/4,
                               #{pid => self()}),
    Config.

end_per_testcase(_Case, _Config) ->
    _ = telemetry:detach(?MODULE),
    erlmcp_flow_test_util:unregister_all(),
    _ = application:stop(erlmcp_flow),
    flush(),
    ok.

handle_event(Event, Measurements, Metadata, #{pid := Pid}) ->
    Pid ! {telemetry, Event, Measurements, Metadata}.

%% The next event of this name.
next(Event) ->
    receive {telemetry, Event, M, Meta} -> {M, Meta}
    after 5000 -> ct:fail({no_event, Event})
    end.

flush() ->
    receive {telemetry, _, _, _} -> flush() after 0 -> ok end.

task_events(_Config) ->
    ok = erlmcp_flow:register_agent(<<"a">>, erlmcp_flow_test_util:echo_agent(), [<<"x">>]),
    {agent, _} = {agent, next([erlmcp_flow, agent, register])},
    {ok, _, #{trace_id := T, span_id := _}} =
        erlmcp_flow:execute(#{}, #{capabilities => [<<"x">>], strategy => round_robin}),
    {Start, StartMeta} = next([erlmcp_flow, task, start]),
    ?assert(is_integer(maps:get(monotonic_time, Start))),
    ?assert(is_integer(maps:get(system_time, Start))),
    ?assertEqual(#{trace_id => T, strategy => round_robin, capabilities => [<<"x">>]}, StartMeta),
    {Attempt, AttemptMeta} = next([erlmcp_flow, attempt, stop]),
    ?assert(maps:get(duration, Attempt) >= 0),
    ?assertMatch(#{trace_id := T, agent_id := <<"a">>, attempt := 1, outcome := ok,
                   span_id := <<_:16/binary>>}, AttemptMeta),
    {Stop, StopMeta} = next([erlmcp_flow, task, stop]),
    ?assert(maps:get(duration, Stop) >= maps:get(duration, Attempt)),
    ?assertMatch(#{trace_id := T, agent_id := <<"a">>, attempts := 1, outcome := ok,
                   strategy := round_robin, capabilities := [<<"x">>]}, StopMeta).

retried_task_events(_Config) ->
    ok = erlmcp_flow:register_agent(<<"bad">>, erlmcp_flow_test_util:raw_agent(fun(_) -> {error, no} end),
                                    [<<"x">>]),
    ok = erlmcp_flow:register_agent(<<"good">>, erlmcp_flow_test_util:echo_agent(), [<<"y">>, <<"x">>]),
    %% round robin from the first agent: bad first, then good
    {ok, _, #{attempts := 2}} =
        erlmcp_flow:execute(#{}, #{capabilities => [<<"x">>], strategy => round_robin},
                            #{base_retry_delay => 0, max_retry_delay => 0}),
    {_, M1} = next([erlmcp_flow, attempt, stop]),
    {_, M2} = next([erlmcp_flow, attempt, stop]),
    ?assertMatch(#{attempt := 1, agent_id := <<"bad">>, outcome := error,
                   error := {agent_error, no}}, M1),
    ?assertMatch(#{attempt := 2, agent_id := <<"good">>, outcome := ok}, M2),
    {_, Stop} = next([erlmcp_flow, task, stop]),
    ?assertMatch(#{attempts := 2, outcome := ok, agent_id := <<"good">>}, Stop).

failed_task_events(_Config) ->
    {error, no_agents_available} = erlmcp_flow:execute(#{}, #{capabilities => [<<"none">>]}),
    {_, _} = next([erlmcp_flow, task, start]),
    {_, Stop} = next([erlmcp_flow, task, stop]),
    ?assertMatch(#{outcome := error, error := no_agents_available, agent_id := undefined,
                   attempts := 0}, Stop),
    %% a bad argument is refused before any task starts: no event
    {error, {badarg, _}} = erlmcp_flow:execute(#{}, #{capabilites => []}),
    receive {telemetry, [erlmcp_flow, task, _], _, _} = E -> ct:fail({unexpected, E})
    after 50 -> ok
    end.

%% A task the agent refused as the caller's error: the attempt and the task
%% stop with outcome rejected, naming the refusing agent.
rejected_task_events(_Config) ->
    ok = erlmcp_flow:register_agent(<<"picky">>,
                                    erlmcp_flow_test_util:raw_agent(fun(_) -> {reject, bad} end),
                                    [<<"x">>]),
    {error, {rejected, bad}} = erlmcp_flow:execute(#{}, #{capabilities => [<<"x">>]}),
    {_, _} = next([erlmcp_flow, task, start]),
    {_, Attempt} = next([erlmcp_flow, attempt, stop]),
    ?assertMatch(#{outcome := rejected, error := {rejected, bad}, agent_id := <<"picky">>}, Attempt),
    {_, Stop} = next([erlmcp_flow, task, stop]),
    ?assertMatch(#{outcome := rejected, error := {rejected, bad}, agent_id := <<"picky">>,
                   attempts := 1}, Stop).

routed_task_events(_Config) ->
    ok = erlmcp_flow:register_agent(<<"a">>, erlmcp_flow_test_util:echo_agent(), [<<"x">>]),
    {ok, <<"a">>, #{trace_id := T}} = erlmcp_flow:route_task(#{}, #{reply_to => self()}),
    receive {erlmcp_flow_result, T, {ok, _, _}} -> ok end,
    {_, #{trace_id := T}} = next([erlmcp_flow, task, start]),
    {_, #{trace_id := T, attempt := 1, outcome := ok}} = next([erlmcp_flow, attempt, stop]),
    {_, #{trace_id := T, attempts := 1, outcome := ok, agent_id := <<"a">>}} =
        next([erlmcp_flow, task, stop]).

%% The option that makes a failed task findable: its trace id, the same as
%% the events'.
error_meta_matches_events(_Config) ->
    ok = erlmcp_flow:register_agent(<<"bad">>, erlmcp_flow_test_util:raw_agent(fun(_) -> {error, no} end),
                                    [<<"x">>]),
    {error, {agent_error, no}, #{trace_id := T, attempts := 1, tried := [#{agent_id := <<"bad">>}]}} =
        erlmcp_flow:execute(#{}, #{capabilities => [<<"x">>], idempotent => false},
                            #{error_meta => true}),
    {_, #{trace_id := T, outcome := error, error := {agent_error, no}}} =
        next([erlmcp_flow, task, stop]),
    {ok, [_ | _]} = erlmcp_flow_correlation_tracker:get_trace_chain(T).

breaker_transition_events(_Config) ->
    ok = erlmcp_flow:register_agent(<<"a">>, erlmcp_flow_test_util:echo_agent(), [<<"x">>]),
    [ok = erlmcp_flow_circuit_breaker:record_result(<<"a">>, {error, boom}) || _ <- lists:seq(1, 10)],
    {M, Meta} = next([erlmcp_flow, breaker, transition]),
    ?assert(is_integer(maps:get(monotonic_time, M))),
    ?assertEqual(#{agent_id => <<"a">>, from => closed, to => open}, Meta),
    ok = erlmcp_flow_circuit_breaker:reset(<<"a">>),
    {_, #{from := open, to := closed}} = next([erlmcp_flow, breaker, transition]).

agent_events(_Config) ->
    A = erlmcp_flow_test_util:echo_agent(),
    ok = erlmcp_flow:register_agent(<<"a">>, A, [<<"x">>, <<"y">>]),
    {_, #{agent_id := <<"a">>, pid := A, kind := agent, capabilities := [<<"x">>, <<"y">>]}} =
        next([erlmcp_flow, agent, register]),
    ok = erlmcp_flow:unregister_agent(<<"a">>),
    {_, #{agent_id := <<"a">>, reason := unregistered}} = next([erlmcp_flow, agent, unregister]),
    ok = erlmcp_flow:register_swarm(<<"s">>, A, [<<"x">>]),
    {_, #{agent_id := <<"s">>, kind := swarm}} = next([erlmcp_flow, agent, register]),
    exit(A, kill),
    {_, #{agent_id := <<"s">>, reason := {down, killed}}} = next([erlmcp_flow, agent, unregister]).

%% A handler that raises is detached by telemetry; tasks go on.
crashing_handler(_Config) ->
    ok = telemetry:attach(crasher, [erlmcp_flow, task, stop], fun ?MODULE:handle_event/4, #{}),
    ok = erlmcp_flow:register_agent(<<"a">>, erlmcp_flow_test_util:echo_agent(), [<<"x">>]),
    {ok, _, _} = erlmcp_flow:execute(#{}, #{}),
    {ok, _, _} = erlmcp_flow:execute(#{}, #{}),
    ?assertEqual([], [H || #{id := crasher} = H <- telemetry:list_handlers([erlmcp_flow])]).

%% A defect inside the routing path (here: the bulkhead server stuck, so
%% its call times out) is answered as {internal_error, _} and reported as an
%% exception event, not raised at the caller.
internal_error_is_an_exception_event(_Config) ->
    Hang = erlmcp_flow_test_util:raw_agent(fun(_) -> noreply end),
    ok = erlmcp_flow:register_agent(<<"h">>, Hang, [<<"x">>]),
    %% fill its bulkhead (10 by default) with tasks that never answer
    [{ok, _, _} = erlmcp_flow:route_task(#{}, #{timeout => 60000}) || _ <- lists:seq(1, 10)],
    ok = sys:suspend(erlmcp_flow_bulkhead),
    try
        ?assertMatch({error, {internal_error, {exit, {timeout, _}}}},
                     erlmcp_flow:execute(#{}, #{capabilities => [<<"x">>]},
                                         #{routing_timeout => 10000}))
    after
        sys:resume(erlmcp_flow_bulkhead)
    end,
    {M, Meta} = next([erlmcp_flow, task, exception]),
    ?assert(maps:get(duration, M) > 0),
    ?assertMatch(#{kind := exit, reason := {timeout, _}, stacktrace := [_ | _],
                   capabilities := [<<"x">>]}, Meta),
    {_, #{outcome := error, error := {internal_error, _}}} = next([erlmcp_flow, task, stop]).
