-module(erlmcp_flow_rpc_tests).

-include_lib("eunit/include/eunit.hrl").

-import(erlmcp_flow_test_util, [echo_agent/0]).

%% The JSON-RPC methods as every transport serves them (erlmcp_flow_rpc:
%% handle/3), called directly: every requirement's JSON spelling, every
%% routing error's code, the params each method refuses.

error_codes_test() ->
    Table = [{no_agents_available, -32001}, {overloaded, -32002},
             {{no_available_agent, []}, -32003}, {{agent_down, x}, -32004},
             {{agent_error, x}, -32005}, {{bad_agent_reply, x}, -32006},
             {not_started, -32007}, {execution_timeout, -32009},
             {{byzantine, no_secret}, -32020}, {{insufficient_agents, 1, 3}, -32021},
             {{no_quorum, #{}}, -32022}, {{badarg, x}, -32602}, {something_else, -32603}],
    [?assertEqual(Code, erlmcp_flow_rpc:error_code(R)) || {R, Code} <- Table].

methods_test_() ->
    {setup,
     fun() ->
             Apps = erlmcp_flow_test_util:start(),
             ok = erlmcp_flow:register_agent(<<"echo-1">>, echo_agent(), [<<"echo">>]),
             Apps
     end,
     fun(Apps) ->
             erlmcp_flow_test_util:unregister_all(),
             erlmcp_flow_test_util:stop(Apps)
     end,
     [{"every requirement in its JSON spelling", fun requirements/0},
      {"params refused, each with a reason", fun refused/0},
      {"routing errors carry their code, message and reason", fun routing_errors/0},
      {"agents, explain, trace, unregister", fun methods/0}]}.

h(Method, Params) ->
    erlmcp_flow_rpc:handle(Method, Params, #{transport => http}).

route(Req) ->
    h(<<"flow.route_task">>, #{<<"task">> => #{<<"id">> => <<"t1">>}, <<"requirements">> => Req}).

requirements() ->
    Base = #{<<"capabilities">> => [<<"echo">>]},
    [?assertMatch({ok, #{agent_id := <<"echo-1">>}}, route(maps:merge(Base, R)))
     || R <- [#{<<"strategy">> => <<"consistent_hash">>, <<"sticky_key">> => <<"k">>},
              #{<<"task_class">> => <<"c">>},
              #{<<"idempotent">> => false},
              #{<<"timeout">> => 5000},
              #{<<"traceparent">> => <<"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01">>,
                <<"tracestate">> => <<"a=1">>},
              #{<<"node">> => <<"any">>}, #{<<"node">> => <<"local">>},
              #{<<"quorum">> => false, <<"on_no_quorum">> => <<"best_effort">>},
              #{<<"on_no_quorum">> => <<"error">>}]],
    %% a quorum without a secret: its own code
    ?assertMatch({error, -32020, _, #{reason := _}}, route(Base#{<<"quorum">> => 1})).

refused() ->
    Bad = fun(R) -> ?assertMatch({error, -32602, _, _}, R) end,
    Bad(route(#{<<"node">> => <<"mars">>})),
    Bad(route(#{<<"on_no_quorum">> => <<"maybe">>})),
    Bad(route(#{<<"strategy">> => <<"fastest">>})),
    Bad(route(#{<<"colour">> => <<"red">>})),
    Bad(route([1, 2])),
    Bad(h(<<"flow.route_task">>, #{<<"task">> => 42})),
    Bad(h(<<"flow.agents">>, #{<<"capabilities">> => <<"echo">>})),
    Bad(h(<<"flow.trace">>, #{})),
    Bad(h(<<"flow.unregister_agent">>, #{<<"agent_id">> => 7})),
    Bad(h(<<"flow.explain">>, #{<<"capabilities">> => [1]})),
    ?assertMatch({error, -32008, _, #{reason := _}}, h(<<"flow.register_agent">>, #{})),
    ?assertMatch({error, -32601, _, _}, h(<<"flow.nope">>, #{})),
    %% params by position: no method takes them
    [?assertMatch({error, -32602, _, #{reason := <<"params must be an object (by name)">>}},
                  h(M, [1, 2])) || M <- [<<"flow.route_task">>, <<"flow.agents">>, <<"flow.explain">>,
                                          <<"flow.trace">>, <<"flow.unregister_agent">>]].

routing_errors() ->
    ?assertMatch({error, -32001, <<"No agents available">>, #{reason := <<"no_agents_available">>}},
                 route(#{<<"capabilities">> => [<<"nobody">>]})),
    Crash = spawn(fun() -> receive {execute_task, _, _, _, _} -> exit(boom) end end),
    ok = erlmcp_flow:register_agent(<<"crash">>, Crash, [<<"crash">>]),
    ?assertMatch({error, -32004, <<"Agent down">>, _},
                 route(#{<<"capabilities">> => [<<"crash">>], <<"idempotent">> => false})),
    Failing = spawn(fun F() -> receive {execute_task, _, _, From, Ref} ->
                                           From ! {task_result, Ref, {error, nope}}, F() end end),
    ok = erlmcp_flow:register_agent(<<"failing">>, Failing, [<<"failing">>]),
    ?assertMatch({error, -32005, <<"Agent error">>, _},
                 route(#{<<"capabilities">> => [<<"failing">>], <<"idempotent">> => false})),
    ?assertMatch({error, -32003, <<"Every attempt failed">>, _},
                 route(#{<<"capabilities">> => [<<"failing">>]})),
    Odd = spawn(fun F() -> receive {execute_task, _, _, From, Ref} ->
                                       From ! {task_result, Ref, strange}, F() end end),
    ok = erlmcp_flow:register_agent(<<"odd">>, Odd, [<<"odd">>]),
    ?assertMatch({error, -32006, <<"Bad agent reply">>, _},
                 route(#{<<"capabilities">> => [<<"odd">>], <<"idempotent">> => false})),
    Slow = spawn(fun() -> receive {execute_task, _, _, _, _} -> receive after infinity -> ok end end end),
    ok = erlmcp_flow:register_agent(<<"slow">>, Slow, [<<"slow">>]),
    ?assertMatch({error, -32009, <<"Request timed out">>, _},
                 route(#{<<"capabilities">> => [<<"slow">>], <<"idempotent">> => false,
                         <<"timeout">> => 50})),
    [ok = erlmcp_flow:unregister_agent(Id) || Id <- [<<"failing">>, <<"odd">>, <<"slow">>]].

methods() ->
    {ok, [#{agent_id := <<"echo-1">>, node := _, in_flight := 0}]} =
        h(<<"flow.agents">>, #{<<"capabilities">> => [<<"echo">>]}),
    ?assertMatch({ok, #{candidates := [_]}}, h(<<"flow.explain">>, #{<<"capabilities">> => [<<"echo">>]})),
    {ok, #{trace_id := T}} = route(#{<<"capabilities">> => [<<"echo">>]}),
    {ok, [_, _]} = h(<<"flow.trace">>, #{<<"trace_id">> => T}),
    ?assertMatch({error, -32602, _, _}, h(<<"flow.trace">>, #{<<"trace_id">> => <<"nothex">>})),
    ?assertMatch({ok, #{agents := 1}}, h(<<"flow.stats">>, #{})),
    ok = erlmcp_flow:register_agent(<<"gone">>, echo_agent(), [<<"x">>]),
    %% an agent of the node itself: not from HTTP or MCP, nor from a TCP
    %% connection that did not register it; from the host of a stdio node, yes
    [?assertMatch({error, -32013, <<"Not this connection's agent">>, _},
                  erlmcp_flow_rpc:handle(<<"flow.unregister_agent">>, #{<<"agent_id">> => <<"gone">>}, Ctx))
     || Ctx <- [#{transport => http}, #{transport => mcp}, #{transport => tcp, conn => self()}]],
    ?assertMatch({ok, _}, erlmcp_flow:find_agent(<<"gone">>)),
    ?assertEqual({ok, #{unregistered => true}},
                 erlmcp_flow_rpc:handle(<<"flow.unregister_agent">>, #{<<"agent_id">> => <<"gone">>},
                                        #{transport => stdio})),
    %% unknown: as if unregistered
    ?assertEqual({ok, #{unregistered => true}}, h(<<"flow.unregister_agent">>, #{<<"agent_id">> => <<"gone">>})).

%% A node whose application is not running answers every method with
%% -32007 "Not started"; a quorum with fewer agents than it needs is
%% -32021 when it must be reached, a degraded answer when best effort will do.
stopped_and_quorum_test() ->
    _ = application:stop(erlmcp_flow),
    Stopped = [h(<<"flow.stats">>, #{}),
               h(<<"flow.explain">>, #{<<"capabilities">> => [<<"x">>]}),
               h(<<"flow.unregister_agent">>, #{<<"agent_id">> => <<"x">>}),
               route(#{<<"capabilities">> => [<<"x">>]})],
    [?assertMatch({error, -32007, <<"Not started">>, #{reason := <<"not_started">>}}, R) || R <- Stopped],
    erlmcp_flow_test_util:with_env(
      [{byzantine, #{hmac_secret => <<"a-secret-of-the-rpc-tests">>}}],
      fun() ->
              ok = erlmcp_flow:register_agent(<<"echo-1">>, echo_agent(), [<<"echo">>]),
              Q = #{<<"capabilities">> => [<<"echo">>], <<"quorum">> => 1},
              ?assertMatch({error, -32021, <<"Fewer agents than the quorum needs">>, _},
                           route(Q#{<<"on_no_quorum">> => <<"error">>})),
              %% best effort (the default): answered, marked degraded
              ?assertMatch({ok, #{quorum := degraded, agent_id := <<"echo-1">>}}, route(Q)),
              erlmcp_flow_test_util:unregister_all()
      end).
