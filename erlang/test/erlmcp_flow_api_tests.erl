%% One strict API: every public function validates its arguments the way
%% execute/3 does, names what was wrong, and answers {error, not_started}
%% when the application is not running instead of raising.
-module(erlmcp_flow_api_tests).

-include_lib("eunit/include/eunit.hrl").

-import(erlmcp_flow_test_util, [echo_agent/0]).

%% Every function of the public modules, called while the application is
%% not running: none raises; those that need the running node say so.
before_start_test() ->
    _ = application:stop(erlmcp_flow),
    NotStarted = {error, not_started},
    Id = <<"a">>,
    Calls = [{erlmcp_flow, execute, [#{}, #{}]},
             {erlmcp_flow, execute, [#{}, #{}, #{}]},
             {erlmcp_flow, route_task, [#{}, #{}]},
             {erlmcp_flow, register_agent, [Id, self(), [<<"x">>]]},
             {erlmcp_flow, register_agent, [Id, self(), [<<"x">>], #{weight => 2}]},
             {erlmcp_flow, register_swarm, [Id, self(), [<<"x">>]]},
             {erlmcp_flow, unregister_agent, [Id]},
             {erlmcp_flow, find_agent, [Id]},
             {erlmcp_flow, find_agents_by_capability, [<<"x">>]},
             {erlmcp_flow, query_agents, [[<<"x">>]]},
             {erlmcp_flow, get_agent_load, [Id]},
             {erlmcp_flow, agent_stats, [Id]},
             {erlmcp_flow, stats, []},
             {erlmcp_flow, explain, [#{}]},
             {erlmcp_flow, memory, []},
             {erlmcp_flow_correlation_tracker, start_span,
              [#{trace_id => binary:copy(<<"a">>, 32), span_id => binary:copy(<<"b">>, 16),
                 trace_flags => 1}, <<"call">>]},
             {erlmcp_flow_circuit_breaker, allow_request, [Id]},
             {erlmcp_flow_circuit_breaker, record_result, [Id, {ok, x}]},
             {erlmcp_flow_circuit_breaker, record_result, [Id, {ok, x}, 10]},
             {erlmcp_flow_circuit_breaker, state, [Id]},
             {erlmcp_flow_circuit_breaker, reset, [Id]},
             {erlmcp_flow_correlation_tracker, get_trace_chain, [binary:copy(<<"a">>, 32)]},
             {erlmcp_flow_correlation_tracker, lookup, [binary:copy(<<"a">>, 16)]},
             {erlmcp_flow_correlation_tracker, sweep, []},
             {erlmcp_flow_q_learning, save, []},
             {erlmcp_flow_q_learning, load, [<<"/nonexistent/q.bin">>]},
             {erlmcp_flow_q_learning, get_q_table, []},
             {erlmcp_flow_q_learning, reset, []},
             {erlmcp_flow_q_learning, explain, [#{}]}],
    [?assertEqual({M, F, NotStarted}, {M, F, apply(M, F, A)}) || {M, F, A} <- Calls],
    %% the cluster's views answer what a lone node that is not running is
    Views = [{erlmcp_flow, nodes, [], [node()]},
             {erlmcp_flow_cluster, peers, [], []},
             {erlmcp_flow_cluster, unreachable, [], []},
             {erlmcp_flow_failure_detector, phi, [node()], 0.0},
             {erlmcp_flow_failure_detector, suspected, [], []},
             {erlmcp_flow_failure_detector, peers, [], []},
             {erlmcp_flow_byzantine_detector, detect_partitions, [], []},
             {erlmcp_flow_byzantine_detector, blacklisted, [], []},
             {erlmcp_flow_byzantine_detector, is_blacklisted, [Id], false}],
    [?assertEqual({M, F, Expected}, {M, F, apply(M, F, A)}) || {M, F, A, Expected} <- Views],
    %% pure functions need nothing running
    ?assertMatch(<<_:32/binary>>, erlmcp_flow_correlation_tracker:generate_trace_id()),
    ?assertEqual(ok, erlmcp_flow_correlation_tracker:validate_tracestate(<<"a=1">>)),
    ?assertEqual(undefined, erlmcp_flow_requirements:class_key(#{})),
    ?assertEqual(<<"c">>, erlmcp_flow_requirements:class_key(#{task_class => <<"c">>})),
    %% every event for telemetry:attach_many/4, whether or not it is loaded
    ?assertEqual(7, length(lists:usort(erlmcp_flow_telemetry:events()))),
    ?assert(lists:member([erlmcp_flow, attempt, stop], erlmcp_flow_telemetry:events())).

%% register_agent/3,4 and register_swarm/3 name the argument and the value.
registration_errors_test() ->
    with_app(
      fun() ->
              P = self(),
              ?assertEqual({error, {badarg, {agent_id, "a"}}},
                           erlmcp_flow:register_agent("a", P, [<<"x">>])),
              ?assertEqual({error, {badarg, {agent_id, <<>>}}},
                           erlmcp_flow:register_agent(<<>>, P, [<<"x">>])),
              ?assertEqual({error, {badarg, {agent_id, too_long}}},
                           erlmcp_flow:register_agent(binary:copy(<<"a">>, 1025), P, [<<"x">>])),
              ?assertEqual({error, {badarg, {pid, self}}},
                           erlmcp_flow:register_agent(<<"a">>, self, [<<"x">>])),
              ?assertEqual({error, {badarg, {capabilities, ["echo"]}}},
                           erlmcp_flow:register_agent(<<"a">>, P, ["echo"])),
              ?assertEqual({error, {badarg, {capabilities, []}}},
                           erlmcp_flow:register_agent(<<"a">>, P, [])),
              ?assertEqual({error, {badarg, {capability, too_long}}},
                           erlmcp_flow:register_agent(<<"a">>, P, [binary:copy(<<"c">>, 1025)])),
              ?assertEqual({error, {badarg, {capabilities, too_many}}},
                           erlmcp_flow:register_agent(
                             <<"a">>, P, [integer_to_binary(I) || I <- lists:seq(1, 1025)])),
              ?assertEqual({error, {badarg, {unknown_option, wieght}}},
                           erlmcp_flow:register_agent(<<"a">>, P, [<<"x">>], #{wieght => 2})),
              ?assertEqual({error, {badarg, {weight, 0}}},
                           erlmcp_flow:register_agent(<<"a">>, P, [<<"x">>], #{weight => 0})),
              ?assertEqual({error, {badarg, opts}},
                           erlmcp_flow:register_agent(<<"a">>, P, [<<"x">>], [{weight, 2}])),
              ?assertEqual({error, {badarg, {capabilities, x}}},
                           erlmcp_flow:register_swarm(<<"s">>, P, x)),
              ?assertEqual([], erlmcp_flow_registry:list_agents())
      end).

%% Lookups refuse what cannot be an id or a capability, as find_agent/1 does.
lookup_errors_test() ->
    with_app(
      fun() ->
              ok = erlmcp_flow:register_agent(<<"echo-1">>, echo_agent(), [<<"echo">>]),
              ?assertEqual({error, {badarg, capabilities}}, erlmcp_flow:query_agents(["echo"])),
              ?assertEqual({error, {badarg, capabilities}}, erlmcp_flow:query_agents(echo)),
              ?assertEqual({error, {badarg, capabilities}}, erlmcp_flow:query_agents([<<>>])),
              ?assertEqual([<<"echo-1">>], erlmcp_flow:query_agents([<<"echo">>])),
              %% no capability: every agent
              ?assertEqual([<<"echo-1">>], erlmcp_flow:query_agents([])),
              ?assertEqual({error, {badarg, capability}},
                           erlmcp_flow:find_agents_by_capability("echo")),
              ?assertMatch([_], erlmcp_flow:find_agents_by_capability(<<"echo">>)),
              ?assertEqual({error, {badarg, agent_id}}, erlmcp_flow:get_agent_load("echo-1")),
              ?assertEqual(0, erlmcp_flow:get_agent_load(<<"echo-1">>)),
              ?assertEqual(0, erlmcp_flow:get_agent_load(<<"unknown">>)),
              ?assertEqual({error, {badarg, agent_id}}, erlmcp_flow:find_agent(echo)),
              ?assertEqual({error, {badarg, agent_id}}, erlmcp_flow:unregister_agent(echo)),
              ?assertEqual({error, {badarg, agent_id}}, erlmcp_flow:agent_stats(echo)),
              erlmcp_flow_test_util:unregister_all()
      end).

%% explain/1 validates its requirements like execute/3: a typo is named, not
%% answered with every agent.
explain_errors_test() ->
    with_app(
      fun() ->
              ok = erlmcp_flow:register_agent(<<"echo-1">>, echo_agent(), [<<"echo">>]),
              ?assertEqual({error, {badarg, {unknown_requirement, capabilites}}},
                           erlmcp_flow:explain(#{capabilites => [<<"echo">>]})),
              ?assertEqual({error, {badarg, {capabilities, ["echo"]}}},
                           erlmcp_flow:explain(#{capabilities => ["echo"]})),
              ?assertEqual({error, {badarg, requirements}}, erlmcp_flow:explain([])),
              ?assertMatch({ok, #{candidates := [_]}},
                           erlmcp_flow:explain(#{capabilities => [<<"echo">>], task_class => a})),
              ?assertMatch({ok, #{candidates := []}},
                           erlmcp_flow:explain(#{capabilities => [<<"none">>]})),
              erlmcp_flow_test_util:unregister_all()
      end).

with_app(Fun) ->
    Apps = erlmcp_flow_test_util:start(),
    try Fun() after erlmcp_flow_test_util:stop(Apps) end.
