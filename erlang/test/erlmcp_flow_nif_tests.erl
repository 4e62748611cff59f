%% The NIF on its own: a private router per test, no application running.
-module(erlmcp_flow_nif_tests).

-include_lib("eunit/include/eunit.hrl").

router() ->
    {ok, R} = erlmcp_flow_nif:router_new(#{}),
    R.

manual_router() ->
    {ok, R} = erlmcp_flow_nif:router_new(#{clock => manual}),
    R.

%% Another node's pid (a cluster's mirrored agent) is kept as it is and
%% comes back from a decision; `{any, local}' passes it by.
remote_pids_test() ->
    R = router(),
    Remote = erlmcp_flow_test_util:remote_pid(),
    ok = erlmcp_flow_nif:agent_insert(R, <<"far">>, Remote, [<<"c">>], agent, 1),
    {ok, <<"far">>, Remote, L1, _, none} =
        erlmcp_flow_nif:decide(R, [<<"c">>], round_robin, undefined, undefined, [], any, undefined),
    {ok, _} = erlmcp_flow_nif:complete(L1, ok),
    ?assertEqual({error, no_agents_available},
                 erlmcp_flow_nif:decide(R, [<<"c">>], round_robin, undefined, undefined, [],
                                        {any, local}, undefined)),
    ok = erlmcp_flow_nif:agent_insert(R, <<"near">>, self(), [<<"c">>], agent, 1),
    Picked = [begin
                  {ok, Id, Pid, L, _, none} =
                      erlmcp_flow_nif:decide(R, [<<"c">>], round_robin, undefined, undefined, [],
                                             {any, local}, undefined),
                  {ok, _} = erlmcp_flow_nif:complete(L, ok),
                  {Id, Pid}
              end || _ <- lists:seq(1, 10)],
    ?assertEqual([{<<"near">>, self()}], lists:usort(Picked)).

garbage_gets_a_named_error_test_() ->
    R = router(),
    ok = erlmcp_flow_nif:agent_insert(R, <<"a">>, self(), [<<"c">>], agent, 1),
    {ok, _, _, Lease, _, none} = erlmcp_flow_nif:decide(R, [<<"c">>], round_robin, undefined, undefined, [], any, undefined),
    {ok, _, _, _, Span} = erlmcp_flow_nif:span_start(R, undefined, <<"t">>),
    Cases =
        [{router, fun() -> erlmcp_flow_nif:router_new(not_a_map) end, opts},
         {router, fun() -> erlmcp_flow_nif:router_new(#{clock => sundial}) end, opts},
         {router, fun() -> erlmcp_flow_nif:router_new(#{colour => red}) end, opts},
         {advance, fun() -> erlmcp_flow_nif:clock_advance(make_ref(), 1) end, router},
         {advance, fun() -> erlmcp_flow_nif:clock_advance(R, -1) end, microseconds},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(self(), <<"b">>, self(), [<<"c">>], agent, 1) end, router},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<"b">>, self(), [<<"c">>], agent, 0) end, weight},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<"b">>, self(), [<<"c">>], agent, -2.5) end, weight},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<"b">>, self(), [<<"c">>], agent, heavy) end, weight},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, b, self(), [<<"c">>], agent, 1) end, agent_id},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<>>, self(), [<<"c">>], agent, 1) end, agent_id},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<"b">>, not_a_pid, [<<"c">>], agent, 1) end, pid},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<"b">>, make_ref(), [<<"c">>], agent, 1) end, pid},
         {decide, fun() -> erlmcp_flow_nif:decide(R, [<<"c">>], round_robin, undefined, undefined, [], {any, nowhere}, undefined) end, kind},
         {decide, fun() -> erlmcp_flow_nif:decide(R, [<<"c">>], round_robin, undefined, undefined, [], {any}, undefined) end, kind},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<"b">>, self(), [], agent, 1) end, capabilities},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<"b">>, self(), [c], agent, 1) end, capabilities},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<"b">>, self(), [<<>>], agent, 1) end, capabilities},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<"b">>, self(), [<<"c">> | improper], agent, 1) end, capabilities},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<"b">>, self(), <<"c">>, agent, 1) end, capabilities},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<"b">>, self(), [<<"c">>], robot, 1) end, kind},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<"b">>, self(), [<<"c">>], "agent", 1) end, kind},
         {insert, fun() -> erlmcp_flow_nif:agent_insert(R, <<1:3>>, self(), [<<"c">>], agent, 1) end, agent_id},
         {remove, fun() -> erlmcp_flow_nif:agent_remove(R, 42) end, agent_id},
         {remove, fun() -> erlmcp_flow_nif:agent_remove(Lease, <<"a">>) end, router},
         {stats, fun() -> erlmcp_flow_nif:router_stats([]) end, router},
         {stats, fun() -> erlmcp_flow_nif:agent_stats(R, #{}) end, agent_id},
         {decide, fun() -> erlmcp_flow_nif:decide(R, [<<"c">>], fastest, undefined, undefined, [], any, undefined) end, strategy},
         {decide, fun() -> erlmcp_flow_nif:decide(R, [<<"c">>], <<"round_robin">>, undefined, undefined, [], any, undefined) end, strategy},
         {decide, fun() -> erlmcp_flow_nif:decide(R, <<"c">>, round_robin, undefined, undefined, [], any, undefined) end, capabilities},
         {decide, fun() -> erlmcp_flow_nif:decide(R, [1.5], round_robin, undefined, undefined, [], any, undefined) end, capabilities},
         {decide, fun() -> erlmcp_flow_nif:decide(Lease, [<<"c">>], round_robin, undefined, undefined, [], any, undefined) end, router},
         {decide, fun() -> erlmcp_flow_nif:decide(R, [<<"c">>], consistent_hash, 42, undefined, [], any, undefined) end, sticky_key},
         {decide, fun() -> erlmcp_flow_nif:decide(R, [<<"c">>], consistent_hash, undefined, undefined, [], any, undefined) end, sticky_key},
         {decide, fun() -> erlmcp_flow_nif:decide(R, [<<"c">>], q_learning, undefined, {class}, [], any, undefined) end, task_class},
         {router, fun() -> erlmcp_flow_nif:router_new(#{alpha => 0}) end, opts},
         {router, fun() -> erlmcp_flow_nif:router_new(#{gamma => 1.0}) end, opts},
         {router, fun() -> erlmcp_flow_nif:router_new(#{epsilon_schedule => step}) end, opts},
         {router, fun() -> erlmcp_flow_nif:router_new(#{task_classes => 0}) end, opts},
         {router, fun() -> erlmcp_flow_nif:router_new(#{hash_balance_factor => 0.5}) end, opts},
         {router, fun() -> erlmcp_flow_nif:router_new(#{fast_threshold_ms => 300}) end, opts},
         {router, fun() -> erlmcp_flow_nif:router_new(#{"alpha" => 0.1}) end, opts},
         {explain, fun() -> erlmcp_flow_nif:explain(R, [x], undefined) end, capabilities},
         {explain, fun() -> erlmcp_flow_nif:explain(Lease, [], undefined) end, router},
         {table, fun() -> erlmcp_flow_nif:q_table(Lease) end, router},
         {save, fun() -> erlmcp_flow_nif:q_save(R, "/tmp/x") end, path},
         {save, fun() -> erlmcp_flow_nif:q_save(R, <<>>) end, path},
         {load, fun() -> erlmcp_flow_nif:q_load(R, <<255, 254>>) end, path},
         {load, fun() -> erlmcp_flow_nif:q_load(make_ref(), <<"/tmp/x">>) end, router},
         {reset, fun() -> erlmcp_flow_nif:q_reset(1) end, router},
         {td, fun() -> erlmcp_flow_nif:td_update(q, 1, 1, 0.1, 0.9) end, q},
         {td, fun() -> erlmcp_flow_nif:td_update(1, 1, 1, 0.1, "0.9") end, gamma},
         {reward, fun() -> erlmcp_flow_nif:reward(10, yes, 50, 200) end, ok},
         {reward, fun() -> erlmcp_flow_nif:reward(10, true, fast, 200) end, fast_us},
         {decide, fun() -> erlmcp_flow_nif:decide(R, [<<"c">>], round_robin, undefined, undefined, [a], any, undefined) end, exclude},
         {decide, fun() -> erlmcp_flow_nif:decide(R, [<<"c">>], round_robin, undefined, undefined, x, any, undefined) end, exclude},
         {decide, fun() -> erlmcp_flow_nif:decide(R, [<<"c">>], round_robin, undefined, undefined, [], agents, undefined) end, kind},
         {capacity, fun() -> erlmcp_flow_nif:has_capacity(R, nope) end, capabilities},
         {capacity, fun() -> erlmcp_flow_nif:has_capacity(self(), []) end, router},
         {capacity, fun() -> erlmcp_flow_nif:has_capacity(R, [], [1], any) end, exclude},
         {capacity, fun() -> erlmcp_flow_nif:has_capacity(R, [], [], agents) end, kind},
         {breaker, fun() -> erlmcp_flow_nif:breaker_allow(R, 1) end, agent_id},
         {breaker, fun() -> erlmcp_flow_nif:breaker_allow(Lease, <<"a">>) end, router},
         {breaker, fun() -> erlmcp_flow_nif:breaker_record(R, <<"a">>, call, 'maybe', 1) end, outcome},
         {breaker, fun() -> erlmcp_flow_nif:breaker_record(R, <<"a">>, call, ok, -1) end, microseconds},
         {breaker, fun() -> erlmcp_flow_nif:breaker_record(R, <<"a">>, Lease, ok, 1) end, permit},
         {breaker, fun() -> erlmcp_flow_nif:breaker_record(R, <<"a">>, probe, ok, 1) end, permit},
         {breaker, fun() -> erlmcp_flow_nif:breaker_state(R, "a") end, agent_id},
         {breaker, fun() -> erlmcp_flow_nif:breaker_reset(R, <<>>) end, agent_id},
         {router, fun() -> erlmcp_flow_nif:router_new(#{window_type => sliding}) end, opts},
         {router, fun() -> erlmcp_flow_nif:router_new(#{max_concurrent => 0}) end, opts},
         %% sizes past their maxima are refused before anything is allocated
         {router, fun() -> erlmcp_flow_nif:router_new(#{consistent_hash_vnodes => 4000000000}) end, opts},
         {router, fun() -> erlmcp_flow_nif:router_new(#{consistent_hash_vnodes => 1001}) end, opts},
         {router, fun() -> erlmcp_flow_nif:router_new(#{task_classes => 4000000000}) end, opts},
         {router, fun() -> erlmcp_flow_nif:router_new(#{task_classes => 257}) end, opts},
         {router, fun() -> erlmcp_flow_nif:router_new(#{window_size => 4000000000}) end, opts},
         {router, fun() -> erlmcp_flow_nif:router_new(#{window_type => time, window_size => 600001}) end, opts},
         {router, fun() -> erlmcp_flow_nif:router_new(#{half_open_max_requests => 10001}) end, opts},
         {router, fun() -> erlmcp_flow_nif:router_new(#{max_concurrent => 1000001}) end, opts},
         {router, fun() -> erlmcp_flow_nif:router_new(#{correlation_max_entries => 10000001}) end, opts},
         {router, fun() -> erlmcp_flow_nif:router_new(#{export_queue => 1000001}) end, opts},
         %% overflowing inputs: named, never a bare badarg
         {td, fun() -> erlmcp_flow_nif:td_update(1.0e308, 0, -1.0e308, -1.0e308, -1.66) end, alpha},
         {td, fun() -> erlmcp_flow_nif:td_update(1.0, 0, 1.0, 0.5, 1.0) end, gamma},
         {td, fun() -> erlmcp_flow_nif:td_update(1 bsl 1100, 0, 1.0, 0.5, 0.5) end, q},
         {reward, fun() -> erlmcp_flow_nif:reward(-1, true, 50, 200) end, latency_us},
         {reward, fun() -> erlmcp_flow_nif:reward(1 bsl 1100, true, 50, 200) end, latency_us},
         {reward, fun() -> erlmcp_flow_nif:reward(10, true, 0, 200) end, fast_us},
         {router, fun() -> erlmcp_flow_nif:router_new(#{failure_rate_threshold => 2}) end, opts},
         {router, fun() -> erlmcp_flow_nif:router_new(#{breaker_enabled => yes}) end, opts},
         {complete, fun() -> erlmcp_flow_nif:complete(R, ok) end, lease},
         {complete, fun() -> erlmcp_flow_nif:complete(Lease, 'maybe') end, outcome},
         {complete, fun() -> erlmcp_flow_nif:complete(Lease, "ok") end, outcome},
         {lease_p95, fun() -> erlmcp_flow_nif:lease_p95(R) end, lease},
         {span_start, fun() -> erlmcp_flow_nif:span_start(Lease, undefined, <<>>) end, router},
         {span_start, fun() -> erlmcp_flow_nif:span_start(R, undefined, summary) end, summary},
         {span_end, fun() -> erlmcp_flow_nif:span_end(Lease, ok, undefined) end, span},
         {span_end, fun() -> erlmcp_flow_nif:span_end(Span, 'maybe', undefined) end, outcome},
         {span_end, fun() -> erlmcp_flow_nif:span_end(Span, ok, <<>>) end, agent_id},
         {span_end, fun() -> erlmcp_flow_nif:span_end(Span, ok, 42) end, agent_id},
         {decide, fun() -> erlmcp_flow_nif:decide(R, [<<"c">>], round_robin, undefined, undefined, [], any, {Lease, 1}) end, span},
         {decide, fun() -> erlmcp_flow_nif:decide(R, [<<"c">>], round_robin, undefined, undefined, [], any, {Span, 70000}) end, span},
         {decide, fun() -> erlmcp_flow_nif:decide(R, [<<"c">>], round_robin, undefined, undefined, [], any, {Span, -1}) end, span},
         {chain, fun() -> erlmcp_flow_nif:trace_chain(R, <<"4BF92F3577B34DA6A3CE929D0E0E4736">>) end, trace_id},
         {chain, fun() -> erlmcp_flow_nif:trace_chain(R, <<"4bf92f35">>) end, trace_id},
         {chain, fun() -> erlmcp_flow_nif:trace_chain(R, <<0:256>>) end, trace_id},
         {chain, fun() -> erlmcp_flow_nif:trace_chain(Span, <<"4bf92f3577b34da6a3ce929d0e0e4736">>) end, router},
         {lookup, fun() -> erlmcp_flow_nif:span_lookup(R, <<"0000000000000000">>) end, span_id},
         {lookup, fun() -> erlmcp_flow_nif:span_lookup(R, "00f067aa0ba902b7") end, span_id},
         {lookup, fun() -> erlmcp_flow_nif:span_lookup(self(), <<"00f067aa0ba902b7">>) end, router},
         {sweep, fun() -> erlmcp_flow_nif:correlation_sweep(Span) end, router},
         {export, fun() -> erlmcp_flow_nif:export_batch(R, -1, <<"svc">>) end, max},
         {export, fun() -> erlmcp_flow_nif:export_batch(R, 10, svc) end, service},
         {export, fun() -> erlmcp_flow_nif:export_batch(Lease, 10, <<"svc">>) end, router}],
    [{atom_to_list(Name) ++ " " ++ atom_to_list(What),
      ?_assertEqual({error, {badarg, What}}, F())} || {Name, F, What} <- Cases]
    ++ [?_assertMatch({ok, _}, erlmcp_flow_nif:complete(Lease, ok)),
        %% headers that are not binaries are invalid trace context, not badarg
        ?_assertEqual({error, invalid_trace_context}, erlmcp_flow_nif:span_start(R, 42, <<>>)),
        ?_assertEqual({error, invalid_trace_context}, erlmcp_flow_nif:parse_traceparent(#{})),
        ?_assertEqual({error, invalid_trace_context}, erlmcp_flow_nif:validate_tracestate([])),
        ?_assertEqual({error, invalid_trace_context},
                      erlmcp_flow_nif:format_traceparent(<<"x">>, <<"y">>, 1)),
        ?_assertEqual({error, invalid_trace_context},
                      erlmcp_flow_nif:format_traceparent(<<"4bf92f3577b34da6a3ce929d0e0e4736">>,
                                                         <<"00f067aa0ba902b7">>, 256)),
        ?_assertEqual(ok, erlmcp_flow_nif:span_end(Span, ok, undefined)),
        ?_assertEqual({error, already_ended}, erlmcp_flow_nif:span_end(Span, failed, undefined))].

lease_p95_follows_the_agents_outcomes_test() ->
    R = manual_router(),
    ok = erlmcp_flow_nif:agent_insert(R, <<"a">>, self(), [<<"c">>], agent, 1),
    Decide = fun() ->
                     {ok, _, _, L, _, none} = erlmcp_flow_nif:decide(R, [<<"c">>], round_robin,
                                                                    undefined, undefined, [],
                                                                    any, undefined),
                     L
             end,
    L1 = Decide(),
    ?assertEqual(undefined, erlmcp_flow_nif:lease_p95(L1)),
    {ok, _} = erlmcp_flow_nif:clock_advance(R, 40000),
    {ok, 40000} = erlmcp_flow_nif:complete(L1, ok),
    L2 = Decide(),
    P95 = erlmcp_flow_nif:lease_p95(L2),
    %% the latency histogram reports within 1/64 of a sample
    ?assert(abs(P95 - 40000) =< 40000 / 64),
    {ok, _} = erlmcp_flow_nif:complete(L2, ok).

%% Several agents with one change of the table: all of them, or none when
%% one spec is bad or one id is taken (in the table or twice in the list).
insert_many_test() ->
    R = manual_router(),
    Self = self(),
    ok = erlmcp_flow_nif:agent_insert_many(R, []),
    ok = erlmcp_flow_nif:agent_insert_many(R, [{<<"a">>, Self, [<<"x">>], agent, 1},
                                               {<<"b">>, Self, [<<"x">>], swarm, 2.5}]),
    ?assertMatch({ok, #{agents := 2}}, erlmcp_flow_nif:router_stats(R)),
    ?assertEqual({error, already_registered},
                 erlmcp_flow_nif:agent_insert_many(R, [{<<"c">>, Self, [<<"x">>], agent, 1},
                                                       {<<"a">>, Self, [<<"x">>], agent, 1}])),
    ?assertEqual({error, already_registered},
                 erlmcp_flow_nif:agent_insert_many(R, [{<<"d">>, Self, [<<"x">>], agent, 1},
                                                       {<<"d">>, Self, [<<"x">>], agent, 1}])),
    ?assertMatch({error, {badarg, _}},
                 erlmcp_flow_nif:agent_insert_many(R, [{<<"e">>, Self, [<<"x">>], agent, 1},
                                                       {<<"f">>, Self, [], agent, 1}])),
    ?assertMatch({error, {badarg, specs}}, erlmcp_flow_nif:agent_insert_many(R, [{<<"g">>}])),
    ?assertMatch({error, {badarg, specs}}, erlmcp_flow_nif:agent_insert_many(R, not_a_list)),
    ?assertMatch({error, {badarg, specs}},
                 erlmcp_flow_nif:agent_insert_many(R, [{<<"h">>, Self, [<<"x">>], agent, 1} | tail])),
    ?assertMatch({ok, #{agents := 2}}, erlmcp_flow_nif:router_stats(R)),
    ?assertMatch({ok, #{agents := 2, agents_bytes := B, table_bytes := T}}
                   when B > 0 andalso T > 0, erlmcp_flow_nif:router_memory(R)).

wrong_arity_raises_undef_not_a_crash_test() ->
    ?assertError(undef, erlang:apply(erlmcp_flow_nif, decide, [a])).

insert_decide_complete_test() ->
    R = manual_router(),
    ok = erlmcp_flow_nif:agent_insert(R, <<"a">>, self(), [<<"x">>, <<"y">>], agent, 1),
    ?assertEqual({error, already_registered},
                 erlmcp_flow_nif:agent_insert(R, <<"a">>, self(), [<<"x">>], agent, 1)),
    Self = self(),
    {ok, <<"a">>, Self, Lease, _, none} = erlmcp_flow_nif:decide(R, [<<"y">>, <<"x">>], round_robin, undefined, undefined, [], any, undefined),
    ?assertMatch({ok, #{in_flight := 1, dispatched := 1}}, erlmcp_flow_nif:agent_stats(R, <<"a">>)),
    ?assertMatch({ok, #{agents := 1, in_flight := 1, episodes := 0}},
                 erlmcp_flow_nif:router_stats(R)),
    ?assertEqual({ok, 1500}, erlmcp_flow_nif:clock_advance(R, 1500)),
    ?assertEqual({ok, 1500}, erlmcp_flow_nif:complete(Lease, ok)),
    ?assertEqual({error, already_settled}, erlmcp_flow_nif:complete(Lease, error)),
    ?assertMatch({ok, #{in_flight := 0, succeeded := 1, failed := 0, ewma_latency_us := 1500.0,
                        success_rate := 1.0, weight := 1.0}},
                 erlmcp_flow_nif:agent_stats(R, <<"a">>)),
    ?assertMatch({ok, #{episodes := 1}}, erlmcp_flow_nif:router_stats(R)),
    ?assertEqual({error, no_agents_available}, erlmcp_flow_nif:decide(R, [<<"z">>], round_robin, undefined, undefined, [], any, undefined)),
    ?assertEqual(ok, erlmcp_flow_nif:agent_remove(R, <<"a">>)),
    ?assertEqual({error, not_found}, erlmcp_flow_nif:agent_remove(R, <<"a">>)),
    ?assertEqual({error, not_found}, erlmcp_flow_nif:agent_stats(R, <<"a">>)),
    ?assertEqual({error, no_agents_available}, erlmcp_flow_nif:decide(R, [], round_robin, undefined, undefined, [], any, undefined)).

system_clock_cannot_be_advanced_test() ->
    ?assertEqual({error, system_clock}, erlmcp_flow_nif:clock_advance(router(), 1)).

every_outcome_is_counted_test() ->
    R = router(),
    ok = erlmcp_flow_nif:agent_insert(R, <<"a">>, self(), [<<"x">>], agent, 1),
    [begin
         {ok, _, _, L, _, none} = erlmcp_flow_nif:decide(R, [], round_robin, undefined, undefined, [], any, undefined),
         {ok, _} = erlmcp_flow_nif:complete(L, O)
     end || O <- [ok, error, timeout, down, abandoned]],
    ?assertMatch({ok, #{dispatched := 5, in_flight := 0, succeeded := 1, failed := 1,
                        timed_out := 1, down := 1, abandoned := 1}},
                 erlmcp_flow_nif:agent_stats(R, <<"a">>)).

a_dead_holder_releases_its_lease_test() ->
    R = router(),
    ok = erlmcp_flow_nif:agent_insert(R, <<"a">>, self(), [<<"x">>], agent, 1),
    {Pid, MRef} = spawn_monitor(fun() ->
                                        {ok, _, _, _Lease, _, none} = erlmcp_flow_nif:decide(R, [], round_robin, undefined, undefined, [], any, undefined),
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
    ok = erlmcp_flow_nif:agent_insert(R, <<"a">>, self(), [<<"x">>], agent, 1),
    {ok, _, _, L, _, none} = erlmcp_flow_nif:decide(R, [], round_robin, undefined, undefined, [], any, undefined),
    ok = erlmcp_flow_nif:agent_remove(R, <<"a">>),
    ?assertMatch({ok, #{agents := 0, in_flight := 1}}, erlmcp_flow_nif:router_stats(R)),
    {ok, _} = erlmcp_flow_nif:complete(L, down),
    ?assertMatch({ok, #{in_flight := 0}}, erlmcp_flow_nif:router_stats(R)).

round_robin_over_the_candidates_test() ->
    R = router(),
    Ids = [<<"a">>, <<"b">>, <<"c">>],
    [ok = erlmcp_flow_nif:agent_insert(R, Id, self(), [<<"x">>], agent, 1) || Id <- Ids],
    ok = erlmcp_flow_nif:agent_insert(R, <<"other">>, self(), [<<"y">>], swarm, 1),
    Picks = [begin
                 {ok, Id, _, L, _, none} = erlmcp_flow_nif:decide(R, [<<"x">>], round_robin, undefined, undefined, [], any, undefined),
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

every_strategy_decides_test() ->
    R = router(),
    [ok = erlmcp_flow_nif:agent_insert(R, <<"a", I>>, self(), [<<"x">>], agent, I) || I <- [1, 2, 3]],
    [begin
         {ok, <<"a", _>>, _, L, _, none} = erlmcp_flow_nif:decide(R, [<<"x">>], S, <<"key">>, <<"class">>, [], any, undefined),
         {ok, _} = erlmcp_flow_nif:complete(L, ok)
     end || S <- erlmcp_flow_requirements:strategies(), _ <- lists:seq(1, 10)],
    %% one sticky key, one agent
    Picks = lists:usort(
              [begin
                   {ok, Id, _, L, _, none} = erlmcp_flow_nif:decide(R, [], consistent_hash, <<"k">>, undefined, [], any, undefined),
                   {ok, _} = erlmcp_flow_nif:complete(L, ok),
                   Id
               end || _ <- lists:seq(1, 20)]),
    ?assertMatch([_], Picks).

explain_and_table_test() ->
    R = manual_router(),
    ok = erlmcp_flow_nif:agent_insert(R, <<"a">>, self(), [<<"x">>], agent, 1),
    ok = erlmcp_flow_nif:agent_insert(R, <<"b">>, self(), [<<"x">>], agent, 1),
    ?assertEqual(#{<<"a">> => #{}, <<"b">> => #{}}, erlmcp_flow_nif:q_table(R)),
    {ok, Id, _, L, _, none} = erlmcp_flow_nif:decide(R, [<<"x">>], q_learning, undefined, undefined, [], any, undefined),
    {ok, _} = erlmcp_flow_nif:clock_advance(R, 5000),
    {ok, 5000} = erlmcp_flow_nif:complete(L, ok),
    Table = erlmcp_flow_nif:q_table(R),
    ?assertMatch(#{Id := #{{0, high, fast, 0} := {_, 1}}}, Table),
    [First, Second] = erlmcp_flow_nif:explain(R, [<<"x">>], undefined),
    ?assertMatch(#{id := _, state := {0, high, fast, 0}, q_value := _, visits := _,
                   softmax := _, in_flight := 0, weight := 1.0, breaker := closed}, First),
    ?assert(maps:get(q_value, First) >= maps:get(q_value, Second)),
    ?assert(abs(maps:get(softmax, First) + maps:get(softmax, Second) - 1.0) < 1.0e-9),
    ?assertEqual([], erlmcp_flow_nif:explain(R, [<<"none">>], undefined)),
    ok = erlmcp_flow_nif:q_reset(R),
    ?assertMatch(#{Id := #{}}, erlmcp_flow_nif:q_table(R)).

bulkhead_and_exclusion_test() ->
    {ok, R} = erlmcp_flow_nif:router_new(#{max_concurrent => 2}),
    ok = erlmcp_flow_nif:agent_insert(R, <<"a">>, self(), [<<"x">>], agent, 1),
    ok = erlmcp_flow_nif:agent_insert(R, <<"s">>, self(), [<<"x">>], swarm, 1),
    ?assertEqual(true, erlmcp_flow_nif:has_capacity(R, [<<"x">>])),
    ?assertEqual(false, erlmcp_flow_nif:has_capacity(R, [<<"y">>])),
    %% the swarm only, then everything but the swarm
    {ok, <<"s">>, _, L1, _, none} = erlmcp_flow_nif:decide(R, [], round_robin, undefined, undefined, [], swarm, undefined),
    {ok, <<"a">>, _, L2, _, none} = erlmcp_flow_nif:decide(R, [], round_robin, undefined, undefined, [<<"s">>], any, undefined),
    ?assertEqual({error, no_agents_available},
                 erlmcp_flow_nif:decide(R, [], round_robin, undefined, undefined, [<<"s">>, <<"a">>], any, undefined)),
    %% two permits each: four leases fill both, the fifth is refused
    Held = [begin {ok, _, _, L, _, none} = erlmcp_flow_nif:decide(R, [], least_connections, undefined, undefined, [], any, undefined), L end
            || _ <- lists:seq(1, 2)],
    ?assertEqual({error, overloaded},
                 erlmcp_flow_nif:decide(R, [], round_robin, undefined, undefined, [], any, undefined)),
    ?assertEqual(false, erlmcp_flow_nif:has_capacity(R, [])),
    {ok, _} = erlmcp_flow_nif:complete(L1, ok),
    ?assertEqual(true, erlmcp_flow_nif:has_capacity(R, [])),
    %% room on the swarm alone: decisions that may take it find room, one
    %% that passes it by finds none
    ?assertEqual(true, erlmcp_flow_nif:has_capacity(R, [], [], any)),
    ?assertEqual(true, erlmcp_flow_nif:has_capacity(R, [], [], swarm)),
    ?assertEqual(true, erlmcp_flow_nif:has_capacity(R, [], [], {swarm, local})),
    ?assertEqual(false, erlmcp_flow_nif:has_capacity(R, [], [<<"s">>], any)),
    ?assertEqual(false, erlmcp_flow_nif:has_capacity(R, [], [<<"s">>], swarm)),
    ?assertEqual(false, erlmcp_flow_nif:has_capacity(R, [<<"y">>], [], any)),
    [{ok, _} = erlmcp_flow_nif:complete(L, ok) || L <- [L2 | Held]],
    ?assertMatch({ok, #{in_flight := 0}}, erlmcp_flow_nif:router_stats(R)).

breaker_transitions_are_reported_test() ->
    {ok, R} = erlmcp_flow_nif:router_new(#{clock => manual, min_requests => 2,
                                           failure_threshold => 2, breaker_timeout_ms => 1}),
    ok = erlmcp_flow_nif:agent_insert(R, <<"a">>, self(), [<<"x">>], agent, 1),
    {ok, _, _, L1, _, none} = erlmcp_flow_nif:decide(R, [], round_robin, undefined, undefined, [], any, undefined),
    {ok, _, _, L2, _, none} = erlmcp_flow_nif:decide(R, [], round_robin, undefined, undefined, [], any, undefined),
    {ok, _} = erlmcp_flow_nif:complete(L1, error),
    ?assertMatch({ok, _, {breaker, closed, open}}, erlmcp_flow_nif:complete(L2, timeout)),
    ?assertEqual({error, no_agents_available},
                 erlmcp_flow_nif:decide(R, [], round_robin, undefined, undefined, [], any, undefined)),
    {ok, _} = erlmcp_flow_nif:clock_advance(R, 1000),
    {ok, _, _, L3, _, {breaker, open, half_open}} =
        erlmcp_flow_nif:decide(R, [], round_robin, undefined, undefined, [], any, undefined),
    ?assertMatch({ok, #{breaker := half_open, probes := 1}}, erlmcp_flow_nif:agent_stats(R, <<"a">>)),
    {ok, _} = erlmcp_flow_nif:complete(L3, ok),
    ?assertMatch({ok, #{breaker_opened := 1, breaker_half_opened := 1}},
                 erlmcp_flow_nif:router_stats(R)).

%% td_update and reward stay finite for inputs at the edge of the float range.
learning_math_stays_finite_test() ->
    V = erlmcp_flow_nif:td_update(1.0e308, 1.0e308, 1.0e308, 1, 0.99),
    ?assert(is_float(V) andalso abs(V) =< 1.0e12),
    ?assert(is_float(erlmcp_flow_nif:td_update(-1.0e308, -1.0e308, -1.0e308, 0.5, 0.5))),
    ?assert(is_float(erlmcp_flow_nif:reward(1.0e300, true, 1.0e-300, 1.0e-300))).
