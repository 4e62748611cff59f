%% A strict HTTP/1.1 implementation (Python's h11, from the MCP tests'
%% venv) as the client of every HTTP endpoint: /rpc (Content-Length and
%% chunked bodies, kept alive, pipelined), /health (GET and HEAD), /mcp,
%% /metrics, /status and /status.json, and the 404 and 405 answers.
%% tests/http/h11_client.py does the requests; h11 raises on any response
%% that breaks RFC 9112's framing.
-module(erlmcp_flow_h11_tests).

-include_lib("eunit/include/eunit.hrl").

h11_test_() ->
    {timeout, 60, fun h11/0}.

h11() ->
    Root = erlmcp_flow_test_util:repo_root("rebar.config"),
    Python = filename:join(Root, "_build/mcp-venv/bin/python"),
    case erlmcp_flow_test_util:require(mcp, fun() -> filelib:is_regular(Python) end,
                                       "the MCP tests' Python venv (_build/mcp-venv, with h11) is "
                                       "missing: .ci/setup makes it") of
        {skip, _} -> ok;
        ok -> run(Python, filename:join(Root, "tests/http/h11_client.py"))
    end.

run(Python, Script) ->
    erlmcp_flow_test_util:with_env(
      [{transports, #{http => #{enabled => true, port => 0}}},
       {metrics, #{http => true, port => 0}}],
      fun() ->
              ok = erlmcp_flow:register_agent(<<"echo-1">>, erlmcp_flow_test_util:echo_agent(), [<<"echo">>]),
              {Status, Out} = erlmcp_flow_test_util:run_exe(
                                Python, [Script, "127.0.0.1",
                                         integer_to_list(erlmcp_flow_transport:port(http)),
                                         integer_to_list(erlmcp_flow_metrics_http:port())]),
              Checks = erlmcp_flow_test_json:decode(Out),
              ?assertEqual(#{<<"rpc">> => [200, 200, 200], <<"health">> => [200, 200],
                             <<"mcp">> => 200, <<"metrics">> => [200, 200, 200],
                             <<"pipelined">> => [200, 200], <<"errors">> => [404, 405]}, Checks),
              ?assertEqual(0, Status)
      end).
