-module(erlmcp_flow_swarm_tests).

-include_lib("eunit/include/eunit.hrl").

-import(erlmcp_flow_test_util, [raw_agent/1, sync_registry/0, wait_until/1]).

swarm_test_() ->
    {foreach,
     fun erlmcp_flow_test_util:start/0,
     fun(Apps) -> erlmcp_flow_test_util:assert_clean(), erlmcp_flow_test_util:stop(Apps) end,
     [{"tasks go to the least loaded member", fun least_loaded/0},
      {"a dead member's tasks are answered agent_down", fun member_down/0},
      {"a swarm without members answers no_members", fun no_members/0},
      {"a cancel reaches the member", fun cancel/0},
      {"members can be added and removed", fun membership/0},
      {"bad members refuse the start", fun bad_members/0},
      {"child_spec/1 under the user's supervisor; it re-registers after a registry restart",
       fun supervised/0}]}.

hanging() -> raw_agent(fun(_) -> noreply end).

start(Members) ->
    {ok, S} = erlmcp_flow_swarm:start_link(<<"s">>, [<<"x">>], Members),
    unlink(S),
    S.

stop(S) ->
    ok = erlmcp_flow_swarm:stop(S),
    sync_registry().

route() ->
    {ok, <<"s">>, #{trace_id := T}} = erlmcp_flow:route_task(#{}, #{reply_to => self(), timeout => 5000}),
    T.

least_loaded() ->
    [A, B, C] = Ms = [hanging(), hanging(), hanging()],
    S = start(Ms),
    ?assertMatch([{<<"s">>, S, swarm, [<<"x">>]}], erlmcp_flow_registry:list_agents()),
    _ = [route() || _ <- lists:seq(1, 6)],
    Seen = [receive {task_seen, P, _, _} -> P end || _ <- lists:seq(1, 6)],
    ?assertEqual([2, 2, 2], [length([P || P <- Seen, P =:= M]) || M <- [A, B, C]]),
    ?assertEqual(lists:sort([{A, 2}, {B, 2}, {C, 2}]), erlmcp_flow_swarm:members(S)),
    stop(S),
    %% the coordinator's death answers the six waiting tasks through their waiters
    [receive {erlmcp_flow_result, _, {error, {agent_down, _}}} -> ok end || _ <- lists:seq(1, 6)],
    wait_until(fun() -> maps:get(in_flight, erlmcp_flow:stats()) =:= 0 end).

member_down() ->
    Dying = raw_agent(fun(_) -> exit(self(), kill) end),
    Echo = raw_agent(fun(T) -> {ok, T} end),
    S = start([Dying]),
    ?assertEqual({error, {agent_error, {agent_down, killed}}}, erlmcp_flow:execute(#{}, #{idempotent => false})),
    ?assertEqual([], erlmcp_flow_swarm:members(S)),
    ok = erlmcp_flow_swarm:add_member(S, Echo),
    ?assertMatch({ok, #{k := 1}, #{agent_id := <<"s">>}}, erlmcp_flow:execute(#{k => 1}, #{})),
    stop(S).

no_members() ->
    S = start([]),
    ?assertEqual({error, {agent_error, no_members}}, erlmcp_flow:execute(#{}, #{idempotent => false})),
    stop(S).

cancel() ->
    M = hanging(),
    S = start([M]),
    ?assertEqual({error, execution_timeout}, erlmcp_flow:execute(#{}, #{timeout => 10, idempotent => false})),
    receive {cancelled, M, _} -> ok end,
    ?assertEqual([{M, 0}], erlmcp_flow_swarm:members(S)),
    stop(S).

membership() ->
    A = raw_agent(fun(_) -> {ok, a} end),
    B = raw_agent(fun(_) -> noreply end),
    S = start([B]),
    ok = erlmcp_flow_swarm:add_member(S, B),
    ?assertEqual([{B, 0}], erlmcp_flow_swarm:members(S)),
    %% B takes a task and keeps it; A joins and, less loaded, gets the next
    T = route(),
    receive {task_seen, B, _, _} -> ok end,
    ok = erlmcp_flow_swarm:add_member(S, A),
    ?assertEqual(lists:sort([{A, 0}, {B, 1}]), erlmcp_flow_swarm:members(S)),
    ?assertMatch({ok, a, _}, erlmcp_flow:execute(#{}, #{})),
    %% B leaves: nothing new goes to it
    ok = erlmcp_flow_swarm:remove_member(S, B),
    ?assertEqual([{A, 0}], erlmcp_flow_swarm:members(S)),
    ?assertMatch({ok, a, _}, erlmcp_flow:execute(#{}, #{})),
    %% but B's task in flight still gets its answer when B dies
    exit(B, kill),
    receive {erlmcp_flow_result, T, Answer} -> ?assertEqual({error, {agent_error, {agent_down, killed}}}, Answer) end,
    ok = erlmcp_flow_swarm:remove_member(S, A),
    ok = erlmcp_flow_swarm:remove_member(S, A),
    ?assertEqual([], erlmcp_flow_swarm:members(S)),
    stop(S).

bad_members() ->
    %% start_link from a helper that traps exits: OTP 25 sends the linked
    %% caller an 'EXIT' after a failed init, OTP 26 and later do not
    ?assertEqual({error, {badarg, members}},
                 linked_start(<<"s">>, [<<"x">>], [nope])),
    ?assertEqual({error, {badarg, {capabilities, []}}}, linked_start(<<"s">>, [], [])).

linked_start(Id, Caps, Members) ->
    Self = self(),
    {Pid, MRef} = spawn_monitor(fun() ->
                                        process_flag(trap_exit, true),
                                        Self ! {started, self(),
                                                erlmcp_flow_swarm:start_link(Id, Caps, Members)}
                                end),
    receive {started, Pid, Result} -> receive {'DOWN', MRef, _, _, _} -> Result end end.

supervised() ->
    Spec = erlmcp_flow_swarm:child_spec(#{swarm_id => <<"s">>, capabilities => [<<"x">>]}),
    ?assertMatch(#{id := {erlmcp_flow_swarm, <<"s">>},
                   start := {erlmcp_flow_swarm, start_link, [<<"s">>, [<<"x">>], []]}}, Spec),
    ?assertError({badarg, {unknown_option, member}},
                 erlmcp_flow_swarm:child_spec(#{swarm_id => <<"s">>, capabilities => [<<"x">>],
                                                member => []})),
    ?assertError({badarg, {missing, capabilities}},
                 erlmcp_flow_swarm:child_spec(#{swarm_id => <<"s">>})),
    ?assertError({badarg, {missing, swarm_id}},
                 erlmcp_flow_swarm:child_spec(#{capabilities => [<<"x">>]})),
    ?assertError({badarg, {opts, s}}, erlmcp_flow_swarm:child_spec(s)),
    {ok, Sup} = erlmcp_flow_test_sup:start(#{strategy => one_for_one}, [Spec]),
    {ok, Swarm} = erlmcp_flow:find_agent(<<"s">>),
    {ok, Member} = erlmcp_flow_agent:start(erlmcp_flow_plain_agent, m),
    ok = erlmcp_flow_swarm:add_member(Swarm, Member),
    ?assertMatch({ok, {m, 1}, #{agent_id := <<"s">>}},
                 erlmcp_flow:execute(#{input => 1}, #{capabilities => [<<"x">>]})),
    erlmcp_flow_test_util:restart_registry(fun() -> erlmcp_flow:find_agent(<<"s">>) =:= {ok, Swarm} end),
    ?assertMatch({ok, {m, 2}, #{agent_id := <<"s">>}},
                 erlmcp_flow:execute(#{input => 2}, #{capabilities => [<<"x">>]})),
    erlmcp_flow_test_sup:stop(Sup),
    ok = erlmcp_flow_agent:stop(Member),
    sync_registry().
