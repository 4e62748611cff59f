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
      {"an agent re-registers when the registry restarts", fun reregister/0}]}.

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
    stop(Pid).

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
    OldRegistry = whereis(erlmcp_flow_registry),
    exit(OldRegistry, kill),
    wait_until(fun() ->
                       case whereis(erlmcp_flow_registry) of
                           undefined -> false;
                           R -> R =/= OldRegistry andalso erlmcp_flow:find_agent(<<"t">>) =:= {ok, Pid}
                       end
               end),
    ?assertMatch({ok, {p, 1}, _}, erlmcp_flow:execute(#{input => 1}, #{capabilities => [<<"x">>]})),
    stop(Pid).
