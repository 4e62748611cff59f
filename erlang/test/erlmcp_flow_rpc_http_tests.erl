-module(erlmcp_flow_rpc_http_tests).

-include_lib("eunit/include/eunit.hrl").

-import(erlmcp_flow_test_util, [echo_agent/0]).

-define(TOKEN, <<"0123456789abcdef0123">>).

%% JSON-RPC over HTTP on loopback: a node with transports.http on a free
%% port, routed to an Erlang echo agent; requests through httpc.
rpc_http_test_() ->
    {setup,
     fun() ->
             _ = application:stop(erlmcp_flow),
             {ok, _} = application:ensure_all_started(inets),
             _ = application:load(erlmcp_flow),
             application:set_env(erlmcp_flow, transports, #{http => #{enabled => true, port => 0}}),
             Apps = erlmcp_flow_test_util:start(),
             ok = erlmcp_flow:register_agent(<<"echo-1">>, echo_agent(), [<<"echo">>]),
             Apps
     end,
     fun(Apps) ->
             erlmcp_flow_test_util:unregister_all(),
             erlmcp_flow_test_util:stop(Apps),
             application:unset_env(erlmcp_flow, transports)
     end,
     [{"route_task answers with the agent's result and the trace", fun route_task/0},
      {"errors: method not found, invalid params, routing errors in the server range",
       fun errors/0},
      {"batches, notifications (204), parse errors", fun batches/0},
      {"health, other paths and methods", fun health/0},
      {"a body past max_message_bytes is 413", fun too_large/0},
      {"the other methods: agents, stats, explain, trace, register over HTTP", fun methods/0},
      {"the Python client example routes tasks over HTTP", fun python_client/0}]}.

url(Path) ->
    "http://127.0.0.1:" ++ integer_to_list(erlmcp_flow_transport:port(http)) ++ Path.

post(Body) ->
    post(Body, []).

post(Body, Headers) ->
    {ok, {{_, Status, _}, RespHeaders, RespBody}} =
        httpc:request(post, {url("/rpc"), Headers, "application/json", Body}, [],
                      [{body_format, binary}]),
    {Status, RespHeaders, RespBody}.

call(Method, Params) ->
    {ok, Req} = erlmcp_flow_jsonrpc:encode({request, 1, Method, Params}),
    {200, Headers, Body} = post(Req),
    {Headers, erlmcp_flow_test_json:decode(Body)}.

route_task() ->
    TP = <<"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01">>,
    {ok, Req} = erlmcp_flow_jsonrpc:encode(
                  {request, <<"r1">>, <<"flow.route_task">>,
                   #{task => #{input => <<"hi">>},
                     requirements => #{capabilities => [<<"echo">>], strategy => <<"q_learning">>}}}),
    {200, Headers, Body} = post(Req, [{"traceparent", binary_to_list(TP)}]),
    #{<<"id">> := <<"r1">>, <<"result">> := Result} = erlmcp_flow_test_json:decode(Body),
    ?assertMatch(#{<<"agent_id">> := <<"echo-1">>, <<"attempts">> := 1,
                   <<"trace_id">> := <<"4bf92f3577b34da6a3ce929d0e0e4736">>}, Result),
    ?assert(is_map_key(<<"result">>, Result)),
    %% the response names the task's span
    {_, Back} = lists:keyfind("traceparent", 1, Headers),
    #{<<"span_id">> := Span} = Result,
    ?assertEqual("00-4bf92f3577b34da6a3ce929d0e0e4736-" ++ binary_to_list(Span) ++ "-01", Back).

errors() ->
    {_, #{<<"error">> := #{<<"code">> := -32601}}} = call(<<"flow.nope">>, #{}),
    {_, #{<<"error">> := #{<<"code">> := -32602, <<"data">> := #{<<"reason">> := R1}}}} =
        call(<<"flow.route_task">>, #{requirements => #{colour => <<"red">>}}),
    ?assertNotEqual(nomatch, binary:match(R1, <<"colour">>)),
    {_, #{<<"error">> := #{<<"code">> := -32602}}} =
        call(<<"flow.route_task">>, #{requirements => #{strategy => <<"fastest">>}}),
    {_, #{<<"error">> := #{<<"code">> := -32602}}} =
        call(<<"flow.route_task">>, #{requirements => #{node => <<"mars">>}}),
    {_, #{<<"result">> := #{<<"agent_id">> := <<"echo-1">>}}} =
        call(<<"flow.route_task">>, #{requirements => #{capabilities => [<<"echo">>],
                                                         node => <<"local">>}}),
    {_, #{<<"error">> := #{<<"code">> := -32001, <<"data">> := #{<<"reason">> := <<"no_agents_available">>}}}} =
        call(<<"flow.route_task">>, #{requirements => #{capabilities => [<<"nobody">>]}}),
    {_, #{<<"error">> := #{<<"code">> := -32602}}} =
        call(<<"flow.route_task">>, #{requirements => #{timeout => 4294967296,
                                                        capabilities => [<<"echo">>]}}).

batches() ->
    Batch = <<"[{\"jsonrpc\":\"2.0\",\"method\":\"flow.stats\",\"id\":1},"
              "{\"jsonrpc\":\"2.0\",\"method\":\"flow.stats\"},"
              "{\"foo\":1},"
              "{\"jsonrpc\":\"2.0\",\"method\":\"flow.nope\",\"id\":\"x\"}]">>,
    {200, _, Body} = post(Batch),
    [#{<<"id">> := 1, <<"result">> := #{<<"agents">> := 1}},
     #{<<"id">> := null, <<"error">> := #{<<"code">> := -32600}},
     #{<<"id">> := <<"x">>, <<"error">> := #{<<"code">> := -32601}}] = erlmcp_flow_test_json:decode(Body),
    {204, _, <<>>} = post(<<"{\"jsonrpc\":\"2.0\",\"method\":\"flow.stats\"}">>),
    {200, _, P} = post(<<"{\"jsonrpc\":">>),
    ?assertMatch(#{<<"error">> := #{<<"code">> := -32700}, <<"id">> := null},
                 erlmcp_flow_test_json:decode(P)).

health() ->
    {ok, {{_, 200, _}, _, Body}} = httpc:request(get, {url("/health"), []}, [], [{body_format, binary}]),
    ?assertEqual(#{<<"status">> => <<"ok">>, <<"agents">> => 1}, erlmcp_flow_test_json:decode(Body)),
    {ok, {{_, 404, _}, _, _}} = httpc:request(get, {url("/nope"), []}, [], []),
    {ok, {{_, 405, _}, _, _}} = httpc:request(get, {url("/rpc"), []}, [], []).

too_large() ->
    Big = binary:copy(<<" ">>, erlmcp_flow_config:get(transports, max_message_bytes) + 1),
    {413, _, _} = post(Big).

methods() ->
    {_, #{<<"result">> := [#{<<"agent_id">> := <<"echo-1">>, <<"capabilities">> := [<<"echo">>],
                             <<"in_flight">> := 0}]}} =
        call(<<"flow.agents">>, #{capabilities => [<<"echo">>]}),
    {_, #{<<"result">> := []}} = call(<<"flow.agents">>, #{capabilities => [<<"other">>]}),
    {_, #{<<"result">> := #{<<"candidates">> := [_]}}} =
        call(<<"flow.explain">>, #{capabilities => [<<"echo">>]}),
    {_, #{<<"result">> := #{<<"trace_id">> := Trace}}} =
        call(<<"flow.route_task">>, #{requirements => #{capabilities => [<<"echo">>]}}),
    {_, #{<<"result">> := Spans}} = call(<<"flow.trace">>, #{trace_id => Trace}),
    ?assert(length(Spans) >= 2),
    {_, #{<<"error">> := #{<<"code">> := -32008}}} =
        call(<<"flow.register_agent">>, #{agent_id => <<"py">>, capabilities => [<<"x">>]}),
    {_, #{<<"error">> := #{<<"code">> := -32602}}} = call(<<"flow.trace">>, #{}).

%% examples/python/flow_client.py, run with python3 against this node:
%% three tasks one by one and three in a batch, each answered by the agent.
python_client() ->
    case erlmcp_flow_test_util:require(python, fun() -> os:find_executable("python3") =/= false end,
                                       "python3 is not installed") of
        {skip, Why} ->
            io:format(user, "~s: the Python client was not run~n", [Why]);
        ok ->
            Python = os:find_executable("python3"),
            Script = filename:join([root(), "examples", "python", "flow_client.py"]),
            Port = integer_to_list(erlmcp_flow_transport:port(http)),
            lists:foreach(
              fun(Extra) ->
                      {Status, Out} = erlmcp_flow_test_util:run_exe(Python, [Script, "--port", Port, "--capability", "echo",
                                                   "--count", "3" | Extra]),
                      ?assertEqual(0, Status),
                      Lines = [erlmcp_flow_test_json:decode(L)
                               || L <- binary:split(Out, <<"\n">>, [global, trim_all])],
                      ?assertEqual(3, length(Lines)),
                      [?assertMatch(#{<<"result">> := #{<<"agent_id">> := <<"echo-1">>}}, L)
                       || L <- Lines]
              end, [[], ["--batch"]])
    end.

root() ->
    erlmcp_flow_test_util:repo_root("examples/python/flow_client.py").

%% With a token: no Authorization (or a wrong one) is 401.
token_test() ->
    _ = application:stop(erlmcp_flow),
    {ok, _} = application:ensure_all_started(inets),
    _ = application:load(erlmcp_flow),
    application:set_env(erlmcp_flow, transports, #{http => #{enabled => true, port => 0,
                                                             token => ?TOKEN}}),
    Apps = erlmcp_flow_test_util:start(),
    try
        Stats = <<"{\"jsonrpc\":\"2.0\",\"method\":\"flow.stats\",\"id\":1}">>,
        {401, _, _} = post(Stats),
        {401, _, _} = post(Stats, [{"authorization", "Bearer wrong"}]),
        {200, _, _} = post(Stats, [{"authorization", "Bearer " ++ binary_to_list(?TOKEN)}])
    after
        erlmcp_flow_test_util:stop(Apps),
        application:unset_env(erlmcp_flow, transports)
    end.
