-module(erlmcp_flow_agent_tests).

-include_lib("eunit/include/eunit.hrl").

-import(erlmcp_flow_test_util, [sync_registry/0, wait_until/1]).

agent_test_() ->
    {foreach,
     fun erlmcp_flow_test_util:start/0,
     fun(Apps) -> erlmcp_flow_test_util:assert_clean(), erlmcp_flow_test_util:stop(Apps) end,
     [{"handle_task/2 is an agent in a few lines", fun plain/0},
      {"handle_task/3 answers now or later", fun deferred/0},
      {"a cancelled task reaches handle_cancel", fun cancel/0},
      {"other messages reach handle_info", fun info/0},
      {"a crash in a callback answers agent_down", fun crash/0},
      {"start fails without handle_task, on init stop, or a taken id", fun start_failures/0},
      {"an agent re-registers when the registry restarts", fun reregister/0},
      {"a callback that breaks the contract stops the agent as gen_server does",
       fun bad_returns/0},
      {"reply/2 takes what handle_task returns, or a bare result", fun reply_shapes/0},
      {"handle_info/2 may answer {noreply, S}, {ok, S} or stop", fun info_returns/0},
      {"child_spec/1: an agent under the user's supervisor comes back registered",
       fun supervised/0},
      {"an idle agent hibernates and answers its next task", fun hibernates/0}]}.

start(Id, Caps, Mod, Args) ->
    {ok, Pid} = erlmcp_flow_agent:start(Id, Caps, Mod, Args),
    Pid.

stop(Pid) ->
    ok = erlmcp_flow_agent:stop(Pid),
    sync_registry().

plain() ->
    Pid = start(<<"p">>, [<<"plain">>], erlmcp_flow_plain_agent, pre),
    ?assertEqual({ok, Pid}, erlmcp_flow:find_agent(<<"p">>)),
    ?assertMatch({ok, {pre, 7}, #{agent_id := <<"p">>}},
                 erlmcp_flow:execute(#{input => 7}, #{capabilities => [<<"plain">>]})),
    ?assertEqual({error, {agent_error, no_input}}, erlmcp_flow:execute(#{}, #{idempotent => false})),
    stop(Pid),
    ?assertEqual({error, not_found}, erlmcp_flow:find_agent(<<"p">>)).

deferred() ->
    Pid = start(<<"t">>, [<<"x">>], erlmcp_flow_test_agent, #{owner => self()}),
    ?assertMatch({ok, 1, _}, erlmcp_flow:execute(#{op => echo, value => 1}, #{})),
    {ok, <<"t">>, #{trace_id := T1}} = erlmcp_flow:route_task(#{op => later, value => a}, #{reply_to => self()}),
    {ok, <<"t">>, #{trace_id := T2}} = erlmcp_flow:route_task(#{op => later, value => b}, #{reply_to => self()}),
    %% the agent keeps serving while two tasks wait
    ?assertMatch({error, {agent_error, failed}}, erlmcp_flow:execute(#{op => fail}, #{idempotent => false})),
    ?assertEqual(2, erlmcp_flow:get_agent_load(<<"t">>)),
    [receive {held, _} -> ok end || _ <- [T1, T2]],
    Pid ! release,
    receive {erlmcp_flow_result, T1, A1} -> ?assertMatch({ok, a, _}, A1) end,
    receive {erlmcp_flow_result, T2, A2} -> ?assertMatch({ok, b, _}, A2) end,
    wait_until(fun() -> erlmcp_flow:get_agent_load(<<"t">>) =:= 0 end),
    {ok, Trace, #{trace_id := TraceId}} = erlmcp_flow:execute(#{op => trace}, #{}),
    ?assertMatch(#{trace_id := TraceId}, Trace),
    stop(Pid),
    receive {terminated, Pid} -> ok end.

cancel() ->
    Pid = start(<<"t">>, [<<"x">>], erlmcp_flow_test_agent, #{owner => self()}),
    ?assertEqual({error, execution_timeout}, erlmcp_flow:execute(#{op => hang}, #{timeout => 10, idempotent => false})),
    receive {agent_cancelled, Pid, Ref} -> ?assert(is_reference(Ref)) end,
    stop(Pid).

info() ->
    Pid = start(<<"t">>, [<<"x">>], erlmcp_flow_test_agent, #{owner => self()}),
    Pid ! {ping, self()},
    receive {pong, Pid} -> ok end,
    ?assertEqual({error, unknown_call}, gen_server:call(Pid, anything)),
    stop(Pid),
    %% an agent without handle_info/2 ignores other messages and casts
    Plain = start(<<"p">>, [<<"plain">>], erlmcp_flow_plain_agent, pre),
    Plain ! unexpected,
    gen_server:cast(Plain, unexpected),
    ?assertMatch({ok, {pre, 1}, _}, erlmcp_flow:execute(#{input => 1},
                                                        #{capabilities => [<<"plain">>]})),
    stop(Plain).

crash() ->
    Pid = start(<<"t">>, [<<"x">>], erlmcp_flow_test_agent, #{owner => self()}),
    ?assertEqual({error, {agent_down, crashed_on_purpose}}, erlmcp_flow:execute(#{op => crash}, #{idempotent => false})),
    sync_registry(),
    ?assertNot(is_process_alive(Pid)),
    ?assertEqual({error, not_found}, erlmcp_flow:find_agent(<<"t">>)).

start_failures() ->
    ?assertEqual({error, {no_handle_task, erlmcp_flow_no_task_agent}},
                 erlmcp_flow_agent:start(<<"n">>, [<<"x">>], erlmcp_flow_no_task_agent, [])),
    ?assertEqual({error, bad_args}, erlmcp_flow_agent:start(<<"n">>, [<<"x">>], erlmcp_flow_test_agent, bad)),
    Pid = start(<<"t">>, [<<"x">>], erlmcp_flow_plain_agent, p),
    ?assertEqual({error, already_registered},
                 erlmcp_flow_agent:start(<<"t">>, [<<"x">>], erlmcp_flow_plain_agent, p)),
    ?assertEqual({error, {badarg, {capabilities, []}}},
                 erlmcp_flow_agent:start(<<"u">>, [], erlmcp_flow_plain_agent, p)),
    %% an unregistered agent is not routable but speaks the protocol
    {ok, Free} = erlmcp_flow_agent:start(erlmcp_flow_plain_agent, q),
    Ref = make_ref(),
    Free ! {execute_task, #{input => 1}, #{}, self(), Ref},
    receive {task_result, Ref, R} -> ?assertEqual({ok, {q, 1}}, R) end,
    ok = erlmcp_flow_agent:stop(Free),
    stop(Pid).

reregister() ->
    Pid = start(<<"t">>, [<<"x">>], erlmcp_flow_plain_agent, p),
    erlmcp_flow_test_util:restart_registry(fun() -> erlmcp_flow:find_agent(<<"t">>) =:= {ok, Pid} end),
    ?assertMatch({ok, {p, 1}, _}, erlmcp_flow:execute(#{input => 1}, #{capabilities => [<<"x">>]})),
    stop(Pid).

bad_returns() ->
    process_flag(trap_exit, true),
    Bad = start(<<"bad">>, [<<"x">>], erlmcp_flow_test_agent, #{owner => self()}),
    %% one attempt: the caller gets the agent's death, not a case_clause
    ?assertEqual({error, {agent_down, {bad_return_value, banana}}},
                 erlmcp_flow:execute(#{op => return, value => banana}, #{idempotent => false})),
    sync_registry(),
    ?assertNot(is_process_alive(Bad)),
    %% with retries the next attempt goes to another agent, not the same one
    Bad2 = start(<<"bad2">>, [<<"y">>], erlmcp_flow_test_agent, #{owner => self()}),
    Good = start(<<"good">>, [<<"y">>], erlmcp_flow_plain_agent, p),
    {ok, _, #{agent_id := <<"good">>, tried := Tried}} =
        erlmcp_flow:execute(#{op => return, value => banana, input => 1},
                            #{capabilities => [<<"y">>], strategy => round_robin}),
    case Tried of
        [] -> ok;
        [#{agent_id := <<"bad2">>, reason := Why}] ->
            ?assertEqual({agent_down, {bad_return_value, banana}}, Why)
    end,
    %% {stop, Reason, S} stops it with that reason
    Plain = start(<<"plain">>, [<<"z">>], erlmcp_flow_test_agent, #{owner => self()}),
    ?assertEqual({error, {agent_down, bad}},
                 erlmcp_flow:execute(#{op => return, value => {stop, bad, #{owner => self()}}},
                                     #{capabilities => [<<"z">>], idempotent => false})),
    sync_registry(),
    ?assertNot(is_process_alive(Plain)),
    stop(Good),
    _ = [catch erlmcp_flow_agent:stop(P) || P <- [Bad2]],
    sync_registry(),
    flush_exits(),
    process_flag(trap_exit, false).

reply_shapes() ->
    Pid = start(<<"t">>, [<<"x">>], erlmcp_flow_test_agent, #{owner => self()}),
    Route = fun(Task) ->
                    {ok, <<"t">>, #{trace_id := T}} =
                        erlmcp_flow:route_task(Task, #{reply_to => self()}),
                    T
            end,
    T1 = Route(#{op => later_bare, value => done}),
    T2 = Route(#{op => later_bare, value => {ok, wrapped}}),
    T3 = Route(#{op => later_bare, value => {error, nope}}),
    %% route_task returns before its waiter has sent the task: the agent
    %% holds all three before it is told to release them
    [receive {held, _} -> ok end || _ <- [T1, T2, T3]],
    Pid ! release,
    Answers = maps:from_list([receive {erlmcp_flow_result, T, A} -> {T, A} end
                              || T <- [T1, T2, T3]]),
    ?assertMatch({ok, done, _}, maps:get(T1, Answers)),
    ?assertMatch({ok, wrapped, _}, maps:get(T2, Answers)),
    ?assertEqual({error, {agent_error, nope}}, maps:get(T3, Answers)),
    ?assertEqual({error, {badarg, task_ctx}}, erlmcp_flow_agent:reply(#{}, done)),
    stop(Pid),
    receive {terminated, Pid} -> ok end.

info_returns() ->
    process_flag(trap_exit, true),
    Pid = start(<<"t">>, [<<"x">>], erlmcp_flow_test_agent, #{owner => self()}),
    Pid ! {noreply_ping, self()},
    receive {pong, Pid} -> ok end,
    Pid ! {ping, self()},
    receive {pong, Pid} -> ok end,
    MRef = erlang:monitor(process, Pid),
    Pid ! {return, banana},
    receive {'DOWN', MRef, process, Pid, Why} -> ?assertEqual({bad_return_value, banana}, Why) end,
    Pid2 = start(<<"t2">>, [<<"x">>], erlmcp_flow_test_agent, #{owner => self()}),
    MRef2 = erlang:monitor(process, Pid2),
    Pid2 ! {return, {stop, normal, #{owner => self()}}},
    receive {'DOWN', MRef2, process, Pid2, Why2} -> ?assertEqual(normal, Why2) end,
    sync_registry(),
    flush_exits(),
    process_flag(trap_exit, false).

supervised() ->
    Spec = erlmcp_flow_agent:child_spec(#{agent_id => <<"sup-1">>, capabilities => [<<"s">>],
                                          module => erlmcp_flow_plain_agent, args => p}),
    ?assertMatch(#{id := {erlmcp_flow_agent, <<"sup-1">>}, restart := permanent,
                   start := {erlmcp_flow_agent, start_link, [<<"sup-1">>, [<<"s">>],
                                                             erlmcp_flow_plain_agent, p]}},
                 Spec),
    Free = erlmcp_flow_agent:child_spec(#{module => erlmcp_flow_plain_agent}),
    ?assertMatch(#{id := erlmcp_flow_plain_agent,
                   start := {erlmcp_flow_agent, start_link, [erlmcp_flow_plain_agent, []]}}, Free),
    ?assertError({badarg, {unknown_option, capabilites}},
                 erlmcp_flow_agent:child_spec(#{module => m, agent_id => <<"a">>,
                                                capabilites => [<<"x">>]})),
    ?assertError({badarg, {missing, capabilities}},
                 erlmcp_flow_agent:child_spec(#{module => m, agent_id => <<"a">>})),
    ?assertError({badarg, {missing, module}}, erlmcp_flow_agent:child_spec(#{})),
    ?assertError({badarg, {missing, agent_id}},
                 erlmcp_flow_agent:child_spec(#{module => m, capabilities => [<<"x">>]})),
    ?assertError({badarg, {module, "m"}}, erlmcp_flow_agent:child_spec(#{module => "m"})),
    ?assertError({badarg, {opts, [{module, m}]}}, erlmcp_flow_agent:child_spec([{module, m}])),
    ?assertMatch(#{start := {erlmcp_flow_agent, start_link,
                             [<<"a">>, [<<"x">>], m, [], #{hibernate_after := infinity}]}},
                 erlmcp_flow_agent:child_spec(#{module => m, agent_id => <<"a">>,
                                                capabilities => [<<"x">>],
                                                hibernate_after => infinity})),
    ?assertError({badarg, {hibernate_after, -1}},
                 erlmcp_flow_agent:child_spec(#{module => m, hibernate_after => -1})),
    {ok, Sup} = erlmcp_flow_test_sup:start(#{strategy => one_for_one, intensity => 5, period => 10},
                                           [Spec]),
    {ok, Pid} = erlmcp_flow:find_agent(<<"sup-1">>),
    ?assertMatch({ok, {p, 1}, _}, erlmcp_flow:execute(#{input => 1}, #{capabilities => [<<"s">>]})),
    exit(Pid, kill),
    wait_until(fun() ->
                       case erlmcp_flow:find_agent(<<"sup-1">>) of
                           {ok, New} -> New =/= Pid;
                           _ -> false
                       end
               end),
    ?assertMatch({ok, {p, 2}, _}, erlmcp_flow:execute(#{input => 2}, #{capabilities => [<<"s">>]})),
    erlmcp_flow_test_sup:stop(Sup),
    sync_registry(),
    ?assertEqual({error, not_found}, erlmcp_flow:find_agent(<<"sup-1">>)).

hibernates() ->
    {ok, Pid} = erlmcp_flow_agent:start(<<"h">>, [<<"hib">>], erlmcp_flow_plain_agent, h,
                                        #{hibernate_after => 0}),
    Req = #{capabilities => [<<"hib">>]},
    Hibernating = fun() ->
                          process_info(Pid, current_function) =:= {current_function,
                                                                    {erlang, hibernate, 3}}
                  end,
    [begin
         wait_until(Hibernating),
         ?assertMatch({ok, {h, N}, _}, erlmcp_flow:execute(#{input => N}, Req))
     end || N <- [1, 2, 3]],
    wait_until(Hibernating),
    %% the default: a second idle; infinity: never
    {ok, Default} = erlmcp_flow_agent:start_link(erlmcp_flow_plain_agent, d),
    wait_until(fun() ->
                       process_info(Default, current_function) =:=
                           {current_function, {erlang, hibernate, 3}}
               end),
    ?assertMatch({ok, _}, erlmcp_flow_agent:start(<<"n">>, [<<"hib">>], erlmcp_flow_plain_agent, n,
                                                  #{hibernate_after => infinity})),
    ?assertError({badarg, {unknown_option, hibernate}},
                 erlmcp_flow_agent:start(<<"x">>, [<<"hib">>], erlmcp_flow_plain_agent, x,
                                         #{hibernate => 0})),
    ?assertError({badarg, {opts, []}},
                 erlmcp_flow_agent:start_link(erlmcp_flow_plain_agent, x, [])),
    unlink(Default),
    [stop(P) || P <- [Pid, Default, element(2, erlmcp_flow:find_agent(<<"n">>))]].

flush_exits() ->
    receive {'EXIT', _, _} -> flush_exits() after 0 -> ok end.
