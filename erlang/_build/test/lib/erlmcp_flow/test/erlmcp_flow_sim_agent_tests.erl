-module(erlmcp_flow_sim_agent_tests).

-include_lib("eunit/include/eunit.hrl").

sim_test_() ->
    {foreach,
     fun erlmcp_flow_test_util:start/0,
     fun(Apps) -> erlmcp_flow_test_util:assert_clean(), erlmcp_flow_test_util:stop(Apps) end,
     [{"a reliable agent always answers ok", fun reliable/0},
      {"a failing agent always answers errors", fun failing/0},
      {"tasks overlap and the agent drains", fun overlap/0}]}.

start(Id, Profile) ->
    {ok, Pid} = erlmcp_flow_sim_agent:start_link(Id, [<<"sim">>], Profile),
    unlink(Pid),
    Pid.

stop(Pid) ->
    ok = erlmcp_flow_agent:stop(Pid),
    erlmcp_flow_test_util:sync_registry().

reliable() ->
    P = start(<<"r">>, #{mean_ms => 0, jitter => 0.0}),
    [?assertMatch({ok, #{echo := #{i := I}, latency_ms := 0}, _}, erlmcp_flow:execute(#{i => I}, #{}))
     || I <- lists:seq(1, 20)],
    stop(P).

failing() ->
    P = start(<<"f">>, #{mean_ms => 0, fail_rate => 1.0}),
    [?assertEqual({error, {agent_error, simulated_failure}}, erlmcp_flow:execute(#{}, #{idempotent => false}))
     || _ <- lists:seq(1, 10)],
    stop(P).

overlap() ->
    P = start(<<"o">>, #{mean_ms => 5, load_factor => 1.0, jitter => 0.0}),
    {ok, Member} = erlmcp_flow_sim_agent:start_link(#{mean_ms => 0}),
    unlink(Member),
    [{ok, _, _} = erlmcp_flow:route_task(#{}, #{reply_to => self()}) || _ <- lists:seq(1, 4)],
    %% latency = mean * (1 + load_factor * tasks already in flight): 5, 10, 15, 20 ms
    Latencies = lists:sort([receive {erlmcp_flow_result, _, {ok, #{latency_ms := L}, _}} -> L end
                            || _ <- lists:seq(1, 4)]),
    ?assertEqual([5, 10, 15, 20], Latencies),
    erlmcp_flow_test_util:wait_until(fun() -> erlmcp_flow:get_agent_load(<<"o">>) =:= 0 end),
    ok = erlmcp_flow_agent:stop(Member),
    stop(P).
