%% The NIF on its own: a private router per test, no application running.
-module(erlmcp_flow_nif_tests).

-include_lib("eunit/include/eunit.hrl").

router() ->
    {ok, R} = erlmcp_flow_nif:router_new(#{}),
    R.

manual_router() ->
    {ok, R} = erlmcp_flow_nif:router_new(#{clock => manual}),
    R.

garbage_gets_a_named_error_test_() ->
    R = router(),
    ok = erlmcp_flow_nif:agent_insert(R, <<"a">>, self(), [<<"c">>], agent),
    {ok, _, _, Lease} = erlmcp_flow_nif:decide(R, [<<"c">>], round_robin),
    Cases =
        [{router, fun() -> erlmcp_flow_nif:router_new(not_a_map) end, opts},
         {router, fun() -> erlmcp_flow_nif:router_new(#{clock => sundial}) end, opts},
         {router, fun() -> erlmcp_flow_nif:router_new(#{colour => red}) end, opts},
         {advance, fun() -> erlmcp_flow_nif:clock_advance(make_ref(), 1) end, router},
         {advance, fun() -> erlmcp_flow_nif:clock_advance(R, -1) end, microseconds},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(self(), <<"b">>, self(), [<<"c">>], agent) end, router},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, b, self(), [<<"c">>], agent) end, agent_id},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<>>, self(), [<<"c">>], agent) end, agent_id},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<"b">>, not_a_pid, [<<"c">>], agent) end, pid},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<"b">>, erlmcp_flow_test_util:remote_pid(), [<<"c">>], agent) end, pid},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<"b">>, self(), [], agent) end, capabilities},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<"b">>, self(), [c], agent) end, capabilities},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<"b">>, self(), [<<>>], agent) end, capabilities},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<"b">>, self(), [<<"c">> | improper], agent) end, capabilities},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<"b">>, self(), <<"c">>, agent) end, capabilities},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<"b">>, self(), [<<"c">>], robot) end, kind},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<"b">>, self(), [<<"c">>], "agent") end, kind},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<1:3>>, self(), [<<"c">>], agent) end, agent_id},
         {remove, fun() -> erlmcp_flow_nif:agent_remove(R, 42) end, agent_id},
         {remove, fun() -> erlmcp_flow_nif:agent_remove(Lease, <<"a">>) end, router},
         {stats, fun() -> erlmcp_flow_nif:router_stats([]) end, router},
         {stats, fun() -> erlmcp_flow_nif:agent_stats(R, #{}) end, agent_id},
         {decide, fun() -> erlmcp_flow_nif:decide(R, [<<"c">>], fastest) end, strategy},
         {decide, fun() -> erlmcp_flow_nif:decide(R, [<<"c">>], <<"round_robin">>) end, strategy},
         {decide, fun() -> erlmcp_flow_nif:decide(R, <<"c">>, round_robin) end, capabilities},
         {decide, fun() -> erlmcp_flow_nif:decide(R, [1.5], round_robin) end, capabilities},
         {decide, fun() -> erlmcp_flow_nif:decide(Lease, [<<"c">>], round_robin) end, router},
         {complete, fun() -> erlmcp_flow_nif:complete(R, ok) end, lease},
         {complete, fun() -> erlmcp_flow_nif:complete(Lease, maybe) end, outcome},
         {complete, fun() -> erlmcp_flow_nif:complete(Lease, "ok") end, outcome}],
    [{atom_to_list(Name) ++ " " ++ atom_to_list(What),
      ?_assertEqual({error, {badarg, What}}, F())} || {Name, F, What} <- Cases]
    ++ [?_assertMatch({ok, _}, erlmcp_flow_nif:complete(Lease, ok))].

wrong_arity_raises_undef_not_a_crash_test() ->
    ?assertError(undef, erlang:apply(erlmcp_flow_nif, decide, [a])).

insert_decide_complete_test() ->
    R = manual_router(),
    ok = erlmcp_flow_nif:agent_insert(R, <<"a">>, self(), [<<"x">>, <<"y">>], agent),
    ?assertEqual({error, already_registered},
                 erlmcp_flow_nif:agent_insert(R, <<"a">>, self(), [<<"x">>], agent)),
    Self = self(),
    {ok, <<"a">>, Self, Lease} = erlmcp_flow_nif:decide(R, [<<"y">>, <<"x">>], round_robin),
    ?assertMatch({ok, #{in_flight := 1, dispatched := 1}}, erlmcp_flow_nif:agent_stats(R, <<"a">>)),
    ?assertMatch({ok, #{agents := 1, in_flight := 1}},
                 erlmcp_flow_nif:router_stats(R)),
    ?assertEqual({ok, 1500}, erlmcp_flow_nif:clock_advance(R, 1500)),
    ?assertEqual({ok, 1500}, erlmcp_flow_nif:complete(Lease, ok)),
    ?assertEqual({error, already_settled}, erlmcp_flow_nif:complete(Lease, error)),
    ?assertMatch({ok, #{in_flight := 0, succeeded := 1, failed := 0, ewma_latency_us := 1500.0}},
                 erlmcp_flow_nif:agent_stats(R, <<"a">>)),
    ?assertEqual({error, no_agents_available}, erlmcp_flow_nif:decide(R, [<<"z">>], round_robin)),
    ?assertEqual(ok, erlmcp_flow_nif:agent_remove(R, <<"a">>)),
    ?assertEqual({error, not_found}, erlmcp_flow_nif:agent_remove(R, <<"a">>)),
    ?assertEqual({error, not_found}, erlmcp_flow_nif:agent_stats(R, <<"a">>)),
    ?assertEqual({error, no_agents_available}, erlmcp_flow_nif:decide(R, [], round_robin)).

system_clock_cannot_be_advanced_test() ->
    ?assertEqual({error, system_clock}, erlmcp_flow_nif:clock_advance(router(), 1)).

every_outcome_is_counted_test() ->
    R = router(),
    ok = erlmcp_flow_nif:agent_insert(R, <<"a">>, self(), [<<"x">>], agent),
    [begin
         {ok, _, _, L} = erlmcp_flow_nif:decide(R, [], round_robin),
         {ok, _} = erlmcp_flow_nif:complete(L, O)
     end || O <- [ok, error, timeout, down, abandoned]],
    ?assertMatch({ok, #{dispatched := 5, in_flight := 0, succeeded := 1, failed := 1,
                        timed_out := 1, down := 1, abandoned := 1}},
                 erlmcp_flow_nif:agent_stats(R, <<"a">>)).

a_dead_holder_releases_its_lease_test() ->
    R = router(),
    ok = erlmcp_flow_nif:agent_insert(R, <<"a">>, self(), [<<"x">>], agent),
    {Pid, MRef} = spawn_monitor(fun() ->
                                        {ok, _, _, _Lease} = erlmcp_flow_nif:decide(R, [], round_robin),
                                        receive never -> ok end
                                end),
    erlmcp_flow_test_util:wait_until(
      fun() -> {ok, #{in_flight := N}} = erlmcp_flow_nif:agent_stats(R, <<"a">>), N =:= 1 end),
    exit(Pid, kill),
    receive {'DOWN', MRef, process, Pid, killed} -> ok end,
    erlmcp_flow_test_util:wait_until(
      fun() -> {ok, #{in_flight := N}} = erlmcp_flow_nif:agent_stats(R, <<"a">>), N =:= 0 end),
    ?assertMatch({ok, #{abandoned := 1}}, erlmcp_flow_nif:agent_stats(R, <<"a">>)),
    ?assertMatch({ok, #{in_flight := 0}}, erlmcp_flow_nif:router_stats(R)).

a_removed_agent_still_settles_test() ->
    R = router(),
    ok = erlmcp_flow_nif:agent_insert(R, <<"a">>, self(), [<<"x">>], agent),
    {ok, _, _, L} = erlmcp_flow_nif:decide(R, [], round_robin),
    ok = erlmcp_flow_nif:agent_remove(R, <<"a">>),
    ?assertMatch({ok, #{agents := 0, in_flight := 1}}, erlmcp_flow_nif:router_stats(R)),
    {ok, _} = erlmcp_flow_nif:complete(L, down),
    ?assertMatch({ok, #{in_flight := 0}}, erlmcp_flow_nif:router_stats(R)).

round_robin_over_the_candidates_test() ->
    R = router(),
    Ids = [<<"a">>, <<"b">>, <<"c">>],
    [ok = erlmcp_flow_nif:agent_insert(R, Id, self(), [<<"x">>], agent) || Id <- Ids],
    ok = erlmcp_flow_nif:agent_insert(R, <<"other">>, self(), [<<"y">>], swarm),
    Picks = [begin
                 {ok, Id, _, L} = erlmcp_flow_nif:decide(R, [<<"x">>], round_robin),
                 {ok, _} = erlmcp_flow_nif:complete(L, ok),
                 Id
             end || _ <- lists:seq(1, 30)],
    Counts = [length([P || P <- Picks, P =:= Id]) || Id <- Ids],
    ?assertEqual([10, 10, 10], Counts).

trace_ids_are_w3c_hex_test() ->
    [begin
         T = erlmcp_flow_nif:generate_trace_id(),
         S = erlmcp_flow_nif:generate_span_id(),
         ?assertMatch({match, _}, re:run(T, "^[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}$")),
         ?assertMatch({match, _}, re:run(S, "^[0-9a-f]{16}$")),
         ?assertNotEqual(<<"0000000000000000">>, S)
     end || _ <- lists:seq(1, 200)],
    ?assertNotEqual(erlmcp_flow_nif:generate_trace_id(), erlmcp_flow_nif:generate_trace_id()).
