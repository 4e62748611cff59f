%% The circuit breaker: its stateful PropEr model against the real NIF, the
%% Erlang API through the application, and routing that skips open breakers.
-module(erlmcp_flow_circuit_breaker_tests).

-include_lib("proper/include/proper.hrl").
-include_lib("eunit/include/eunit.hrl").

-import(erlmcp_flow_test_util, [raw_agent/1, echo_agent/0]).

statem_test_() ->
    {timeout, 120,
     fun() ->
             %% the transitions the model goes through are logged as warnings
             logger:set_primary_config(level, critical),
             ?assert(proper:quickcheck(erlmcp_flow_breaker_statem:prop_breaker(),
                                       [{numtests, 500}, {to_file, user}, quiet]))
     end}.

%% Through the application, on a manual clock: no sleeping.
api_test_() ->
    {foreach,
     fun() ->
             _ = application:stop(erlmcp_flow),
             logger:set_primary_config(level, critical),
             _ = application:load(erlmcp_flow),
             ok = application:set_env(erlmcp_flow, clock, manual),
             {ok, _} = application:ensure_all_started(erlmcp_flow)
     end,
     fun(_) ->
             erlmcp_flow_test_util:unregister_all(),
             ok = application:stop(erlmcp_flow),
             application:unset_env(erlmcp_flow, clock)
     end,
     [{"allow, record, state and reset", fun api/0},
      {"probes of an earlier half-open period neither free slots nor count", fun stale_probes/0},
      {"probes whose callers died or never record do not wedge the breaker", fun leaked_probes/0},
      {"a call allowed while closed and recorded while half-open is no probe", fun closed_call/0},
      {"routing skips an open breaker and probes it after the timeout", fun routing/0},
      {"bad input gets named errors", fun bad_input/0}]}.

api() ->
    ok = erlmcp_flow:register_agent(<<"a">>, echo_agent(), [<<"x">>]),
    ?assertEqual(closed, erlmcp_flow_circuit_breaker:state(<<"a">>)),
    [begin
         allow = erlmcp_flow_circuit_breaker:allow_request(<<"a">>),
         ok = erlmcp_flow_circuit_breaker:record_result(<<"a">>, {error, boom})
     end || _ <- lists:seq(1, 10)],
    ?assertEqual(open, erlmcp_flow_circuit_breaker:state(<<"a">>)),
    ?assertEqual(deny, erlmcp_flow_circuit_breaker:allow_request(<<"a">>)),
    ?assertMatch(#{breaker_opened := 1}, erlmcp_flow:stats()),
    {ok, _} = erlmcp_flow_registry:advance_clock(30000000),
    ?assertEqual(half_open, erlmcp_flow_circuit_breaker:state(<<"a">>)),
    [allow, allow, allow, deny] = [erlmcp_flow_circuit_breaker:allow_request(<<"a">>) || _ <- lists:seq(1, 4)],
    [ok = erlmcp_flow_circuit_breaker:record_result(<<"a">>, {ok, fine}) || _ <- lists:seq(1, 3)],
    ?assertEqual(closed, erlmcp_flow_circuit_breaker:state(<<"a">>)),
    ?assertMatch(#{breaker_opened := 1, breaker_half_opened := 1, breaker_closed := 1},
                 erlmcp_flow:stats()),
    [ok = erlmcp_flow_circuit_breaker:record_result(<<"a">>, {error, x}) || _ <- lists:seq(1, 10)],
    ?assertEqual(open, erlmcp_flow_circuit_breaker:state(<<"a">>)),
    ok = erlmcp_flow_circuit_breaker:reset(<<"a">>),
    ?assertEqual(closed, erlmcp_flow_circuit_breaker:state(<<"a">>)),
    ?assertMatch({ok, #{breaker := closed, probes := 0}}, erlmcp_flow:agent_stats(<<"a">>)).

%% Opens `a''s breaker (10 failures) and moves the clock to half-open.
half_open() ->
    ok = erlmcp_flow:register_agent(<<"a">>, echo_agent(), [<<"x">>]),
    [ok = erlmcp_flow_circuit_breaker:record_result(<<"a">>, {error, boom}) || _ <- lists:seq(1, 10)],
    ?assertEqual(open, erlmcp_flow_circuit_breaker:state(<<"a">>)),
    {ok, _} = erlmcp_flow_registry:advance_clock(30000000),
    ?assertEqual(half_open, erlmcp_flow_circuit_breaker:state(<<"a">>)).

allow(N) ->
    [erlmcp_flow_circuit_breaker:allow_request(<<"a">>) || _ <- lists:seq(1, N)].

probes() ->
    {ok, #{probes := P}} = erlmcp_flow:agent_stats(<<"a">>),
    P.

%% The report: half_open_max_requests 3; 3 probes, 1 fails; the clock past
%% the timeout, 3 new probes; the 2 old ones succeed; 2 more asked for.
stale_probes() ->
    half_open(),
    ?assertEqual([allow, allow, allow], allow(3)),
    ok = erlmcp_flow_circuit_breaker:record_result(<<"a">>, {error, boom}),
    ?assertEqual(open, erlmcp_flow_circuit_breaker:state(<<"a">>)),
    {ok, _} = erlmcp_flow_registry:advance_clock(30000000),
    ?assertEqual([allow, allow, allow], allow(3)),
    %% this process's two old probes are recorded first: stale, ignored
    [ok = erlmcp_flow_circuit_breaker:record_result(<<"a">>, {ok, fine}) || _ <- [1, 2]],
    ?assertEqual(3, probes()),
    ?assertEqual([deny, deny], allow(2)),
    ?assertEqual(half_open, erlmcp_flow_circuit_breaker:state(<<"a">>)),
    %% the three new ones close it
    [ok = erlmcp_flow_circuit_breaker:record_result(<<"a">>, {ok, fine}) || _ <- [1, 2, 3]],
    ?assertEqual(closed, erlmcp_flow_circuit_breaker:state(<<"a">>)).

leaked_probes() ->
    half_open(),
    %% three callers get a probe each and die without recording it
    Die = fun() ->
                  {_, M} = spawn_monitor(fun() -> exit(erlmcp_flow_circuit_breaker:allow_request(<<"a">>)) end),
                  receive {'DOWN', M, process, _, Why} -> Why end
          end,
    ?assertEqual([allow, allow, allow], [Die() || _ <- [1, 2, 3]]),
    ?assertEqual(0, probes()),
    ?assertEqual([allow, allow, allow, deny], allow(4)),
    %% this caller holds three and never records them: an hour later they
    %% have counted as failed, and the breaker probes again after its timeout
    {ok, _} = erlmcp_flow_registry:advance_clock(3600 * 1000000),
    ?assertEqual(open, erlmcp_flow_circuit_breaker:state(<<"a">>)),
    ?assertEqual(0, probes()),
    {ok, _} = erlmcp_flow_registry:advance_clock(30000000),
    ?assertEqual(half_open, erlmcp_flow_circuit_breaker:state(<<"a">>)),
    ?assertEqual([allow], allow(1)),
    %% and routing sees it: a task goes through as a probe
    ?assertMatch({ok, _, #{agent_id := <<"a">>}}, erlmcp_flow:execute(#{}, #{capabilities => [<<"x">>]})),
    erase({erlmcp_flow_circuit_breaker, <<"a">>}).

closed_call() ->
    ok = erlmcp_flow:register_agent(<<"a">>, echo_agent(), [<<"x">>]),
    Caller = self(),
    %% a caller allowed while closed, recording late
    Late = spawn_link(fun() ->
                              allow = erlmcp_flow_circuit_breaker:allow_request(<<"a">>),
                              Caller ! allowed,
                              receive record -> ok end,
                              Caller ! {recorded, erlmcp_flow_circuit_breaker:record_result(<<"a">>, {error, late})}
                      end),
    receive allowed -> ok end,
    [ok = erlmcp_flow_circuit_breaker:record_result(<<"a">>, {error, boom}) || _ <- lists:seq(1, 10)],
    {ok, _} = erlmcp_flow_registry:advance_clock(30000000),
    ?assertEqual([allow, allow, allow], allow(3)),
    Late ! record,
    receive {recorded, R} -> ?assertEqual(ok, R) end,
    ?assertEqual(half_open, erlmcp_flow_circuit_breaker:state(<<"a">>)),
    ?assertEqual(3, probes()),
    erase({erlmcp_flow_circuit_breaker, <<"a">>}).

routing() ->
    Bad = raw_agent(fun(_) -> {error, broken} end),
    ok = erlmcp_flow:register_agent(<<"bad">>, Bad, [<<"x">>]),
    ok = erlmcp_flow:register_agent(<<"good">>, echo_agent(), [<<"x">>]),
    Once = #{idempotent => false, strategy => round_robin},
    %% round robin sends half the tasks to the bad agent until its breaker opens
    Answers = [element(1, erlmcp_flow:execute(#{}, Once)) || _ <- lists:seq(1, 20)],
    ?assertEqual(open, erlmcp_flow_circuit_breaker:state(<<"bad">>)),
    ?assertEqual(10, length([A || A <- Answers, A =:= error])),
    %% now every task goes to the good agent
    [?assertMatch({ok, _, #{agent_id := <<"good">>}}, erlmcp_flow:execute(#{}, Once))
     || _ <- lists:seq(1, 10)],
    %% after the timeout the bad agent gets probes again; a failed probe reopens it
    {ok, _} = erlmcp_flow_registry:advance_clock(30000000),
    Probed = [maps:get(agent_id, element(3, R), bad) || _ <- lists:seq(1, 4),
                                                       R <- [erlmcp_flow:execute(#{}, Once)],
                                                       element(1, R) =:= ok],
    ?assertEqual(open, erlmcp_flow_circuit_breaker:state(<<"bad">>)),
    ?assert(lists:all(fun(Id) -> Id =:= <<"good">> end, Probed)),
    %% with only the bad agent's breaker open and no other agent: no_agents_available
    ok = erlmcp_flow:unregister_agent(<<"good">>),
    ?assertEqual({error, no_agents_available}, erlmcp_flow:execute(#{}, Once)).

bad_input() ->
    ?assertEqual({error, not_found}, erlmcp_flow_circuit_breaker:allow_request(<<"nobody">>)),
    ?assertEqual({error, not_found}, erlmcp_flow_circuit_breaker:state(<<"nobody">>)),
    ?assertEqual({error, not_found}, erlmcp_flow_circuit_breaker:reset(<<"nobody">>)),
    ?assertEqual({error, {badarg, agent_id}}, erlmcp_flow_circuit_breaker:allow_request(42)),
    ?assertEqual({error, {badarg, result}}, erlmcp_flow_circuit_breaker:record_result(<<"a">>, 'maybe')),
    ?assertEqual({error, {badarg, microseconds}},
                 erlmcp_flow_circuit_breaker:record_result(<<"nobody">>, {ok, 1}, -1)).
