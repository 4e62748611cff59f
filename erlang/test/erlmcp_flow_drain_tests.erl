-module(erlmcp_flow_drain_tests).

-include_lib("eunit/include/eunit.hrl").

%% erlmcp_flow:drain/0,1 on one node; the cluster suite drains nodes of a
%% cluster under load (rolling_upgrade).
drain_test_() ->
    {foreach,
     fun() -> erlmcp_flow_test_util:start() end,
     fun(Apps) ->
             erlmcp_flow_test_util:unregister_all(),
             erlmcp_flow_test_util:stop(Apps)
     end,
     [{"tasks in flight finish, new ones are refused, then ok", fun finishes_in_flight/0},
      {"past the timeout: what is left, and the node stays drained", fun timeout/0},
      {"bad options are named; drained until the application restarts", fun options_and_restart/0}]}.

not_started_test() ->
    ?assertEqual({error, not_started}, erlmcp_flow:drain()).

%% An agent that holds every task until told `{go, Ref}' (it reports
%% `{held, Ref}' first).
holding_agent() ->
    Owner = self(),
    spawn_link(fun() -> hold(Owner) end).

hold(Owner) ->
    receive
        {execute_task, Task, _Ctx, From, Ref} ->
            Owner ! {held, self(), Ref},
            receive {go, Ref} -> From ! {task_result, Ref, {ok, Task}} end,
            hold(Owner)
    end.

%% `N' callers, each waiting for one task; returns their pids.
callers(N, Idempotent) ->
    Self = self(),
    [spawn_link(fun() ->
                        Self ! {answer, self(), erlmcp_flow:execute(#{n => I},
                                                                    #{capabilities => [<<"hold">>],
                                                                      idempotent => Idempotent},
                                                                    #{timeout => 60000})}
                end) || I <- lists:seq(1, N)].

held(N) ->
    [receive {held, Agent, Ref} -> {Agent, Ref} after 5000 -> error(not_held) end
     || _ <- lists:seq(1, N)].

finishes_in_flight() ->
    [ok = erlmcp_flow:register_agent(<<"hold-", (integer_to_binary(I))/binary>>, holding_agent(),
                                     [<<"hold">>]) || I <- [1, 2]],
    Callers = callers(2, false),
    Held = held(2),
    Self = self(),
    Drainer = spawn_link(fun() -> Self ! {drained, erlmcp_flow:drain(#{timeout => infinity})} end),
    erlmcp_flow_test_util:wait_until(fun() -> maps:get(draining, erlmcp_flow:stats()) end),
    %% a new task is refused at once, on every path
    ?assertEqual({error, draining}, erlmcp_flow:execute(#{}, #{capabilities => [<<"hold">>]})),
    ?assertEqual({error, draining}, erlmcp_flow:route_task(#{}, #{capabilities => [<<"hold">>]})),
    ?assertMatch({error, -32011, _, #{reason := <<"draining">>}},
                 erlmcp_flow_rpc:handle(<<"flow.route_task">>,
                                        #{<<"task">> => #{}, <<"requirements">> =>
                                              #{<<"capabilities">> => [<<"hold">>]}},
                                        #{transport => http})),
    %% still waiting for the two in flight
    ?assertMatch(#{in_flight := 2, draining := true}, erlmcp_flow:stats()),
    receive {drained, Early} -> error({drained_early, Early}) after 0 -> ok end,
    ?assert(is_process_alive(Drainer)),
    [Agent ! {go, Ref} || {Agent, Ref} <- Held],
    Answers = [receive {answer, C, A} -> A after 5000 -> error(no_answer) end || C <- Callers],
    ?assertMatch([{ok, _, _}, {ok, _, _}], Answers),
    receive {drained, Result} -> ?assertEqual(ok, Result) after 5000 -> error(not_drained) end,
    %% drained: nothing left, and a second drain says so at once
    ?assertEqual(ok, erlmcp_flow:drain(#{timeout => 0})).

timeout() ->
    ok = erlmcp_flow:register_agent(<<"hold-1">>, holding_agent(), [<<"hold">>]),
    [_Caller] = callers(1, false),
    [{Agent, Ref}] = held(1),
    ?assertEqual({error, {timeout, #{in_flight => 1, remote => 0, votes => 0}}},
                 erlmcp_flow:drain(#{timeout => 0})),
    ?assertEqual({error, draining}, erlmcp_flow:execute(#{}, #{capabilities => [<<"hold">>]})),
    Agent ! {go, Ref},
    receive {answer, _, A} -> ?assertMatch({ok, _, _}, A) after 5000 -> error(no_answer) end,
    ?assertEqual(ok, erlmcp_flow:drain(#{timeout => 5000})).

options_and_restart() ->
    ?assertEqual({error, {badarg, {timeout, -1}}}, erlmcp_flow:drain(#{timeout => -1})),
    ?assertEqual({error, {badarg, {unknown_option, wait}}}, erlmcp_flow:drain(#{wait => 1})),
    ?assertEqual({error, {badarg, {opts, now}}}, erlmcp_flow:drain(now)),
    ?assertMatch(#{draining := false}, erlmcp_flow:stats()),
    ok = erlmcp_flow:drain(),
    ?assertMatch(#{draining := true}, erlmcp_flow:stats()),
    %% a task another node forwards here is refused as a new one is
    {ok, Plan} = erlmcp_flow_requirements:check(#{capabilities => [<<"echo">>]}),
    ?assertEqual({error, draining}, erlmcp_flow_router:execute_plan(#{}, Plan, #{})),
    ?assertEqual({error, draining, #{}},
                 erlmcp_flow_router:execute_plan(#{}, Plan, #{error_meta => true})),
    ?assertMatch([_ | _], [L || L <- binary:split(iolist_to_binary(erlmcp_flow_prometheus:render()),
                                                   <<"\n">>, [global]),
                               L =:= <<"erlmcp_flow_draining 1">>]),
    ok = application:stop(erlmcp_flow),
    {ok, _} = application:ensure_all_started(erlmcp_flow),
    ?assertMatch(#{draining := false}, erlmcp_flow:stats()),
    ok = erlmcp_flow:register_agent(<<"echo">>, erlmcp_flow_test_util:echo_agent(), [<<"echo">>]),
    ?assertMatch({ok, _, _}, erlmcp_flow:execute(#{}, #{capabilities => [<<"echo">>]})).
