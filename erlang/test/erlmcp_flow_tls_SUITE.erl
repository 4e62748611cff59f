%% TLS on every listener (OTP's ssl), client certificates, and MCP servers
%% at https URLs: certificates made by public_key for the run, real sockets.
-module(erlmcp_flow_tls_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([tcp_over_tls/1, client_certificates/1, https_endpoints/1, mcp_over_https/1]).

-define(TOKEN, <<"0123456789abcdef0123">>).

all() -> [tcp_over_tls, client_certificates, https_endpoints, mcp_over_https].

init_per_suite(Config) ->
    {ok, _} = application:ensure_all_started(ssl),
    {ok, _} = application:ensure_all_started(inets),
    Files = erlmcp_flow_test_util:tls_files(filename:join(?config(priv_dir, Config), "certs")),
    [{tls, Files} | Config].

end_per_suite(_Config) ->
    ok.

init_per_testcase(_Case, Config) ->
    Config.

end_per_testcase(_Case, _Config) ->
    _ = application:stop(erlmcp_flow),
    application:unset_env(erlmcp_flow, transports),
    application:unset_env(erlmcp_flow, metrics),
    application:unset_env(erlmcp_flow, mcp),
    ok.

start(Env) ->
    _ = application:stop(erlmcp_flow),
    _ = application:load(erlmcp_flow),
    [ok = application:set_env(erlmcp_flow, K, V) || {K, V} <- Env],
    {ok, _} = application:ensure_all_started(erlmcp_flow),
    Echo = spawn(fun Loop() ->
                         receive {execute_task, T, _, From, Ref} -> From ! {task_result, Ref, {ok, T}}, Loop() end
                 end),
    ok = erlmcp_flow:register_agent(<<"echo-1">>, Echo, [<<"echo">>]).

server_tls(Config) ->
    #{server := #{cert := C, key := K}} = ?config(tls, Config),
    #{certfile => C, keyfile => K}.

%% What a client needs to trust the server (and a client certificate).
client_opts(Config, WithCert) ->
    #{server := _, client := #{cacerts := Trust, cert := C, key := K}} = ?config(tls, Config),
    [binary, {active, false}, {verify, verify_peer}, {cacertfile, Trust},
     {server_name_indication, "localhost"}
     | case WithCert of
           true -> [{certfile, C}, {keyfile, K}];
           false -> []
       end].

line(Id, Method, Params) ->
    {ok, Bin} = erlmcp_flow_jsonrpc:encode({request, Id, Method, Params}),
    [Bin, $\n].

route(Id) ->
    line(Id, <<"flow.route_task">>, #{task => #{n => Id}, requirements => #{capabilities => [<<"echo">>]}}).

recv_json(S) ->
    recv_line(S, <<>>).

recv_line(S, Acc) ->
    case binary:split(Acc, <<"\n">>) of
        [Line, _] ->
            erlmcp_flow_test_json:decode(Line);
        [_] ->
            {ok, More} = ssl:recv(S, 0, 10000),
            recv_line(S, <<Acc/binary, More/binary>>)
    end.

%%--------------------------------------------------------------------
%% Cases
%%--------------------------------------------------------------------

%% JSON-RPC over TLS: a client that trusts the node's CA is served; a plain
%% TCP client on the same port is not, and leaves the listener serving.
tcp_over_tls(Config) ->
    start([{transports, #{tcp => #{enabled => true, port => 0, tls => server_tls(Config)}}}]),
    Port = erlmcp_flow_transport:port(tcp),
    {ok, S} = ssl:connect({127, 0, 0, 1}, Port, client_opts(Config, false), 10000),
    ok = ssl:send(S, route(1)),
    ?assertMatch(#{<<"id">> := 1, <<"result">> := #{<<"agent_id">> := <<"echo-1">>}}, recv_json(S)),
    {ok, Plain} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}]),
    ok = gen_tcp:send(Plain, route(2)),
    ?assertMatch({error, _}, case gen_tcp:recv(Plain, 0, 5000) of
                                 {ok, <<"{", _/binary>> = J} -> {json, J};
                                 {ok, _TlsAlert} -> {error, alert};
                                 E -> E
                             end),
    gen_tcp:close(Plain),
    ok = ssl:send(S, route(3)),
    ?assertMatch(#{<<"id">> := 3, <<"result">> := _}, recv_json(S)),
    ssl:close(S).

%% client_certs => required: no certificate, no connection; a certificate
%% the node's CA file trusts authenticates (no token set); with a token too,
%% the token is still asked.
client_certificates(Config) ->
    #{server := #{cacerts := ClientCA}} = ?config(tls, Config),
    Tls = (server_tls(Config))#{cacertfile => ClientCA, client_certs => required},
    start([{transports, #{tcp => #{enabled => true, port => 0, tls => Tls}}}]),
    Port = erlmcp_flow_transport:port(tcp),
    Refused = case ssl:connect({127, 0, 0, 1}, Port, client_opts(Config, false), 10000) of
                  {error, _} = E -> E;
                  {ok, S0} ->
                      %% TLS 1.3: the server's refusal comes after the client's
                      %% handshake, as an alert on the first read
                      _ = ssl:send(S0, route(1)),
                      R = ssl:recv(S0, 0, 5000),
                      ssl:close(S0),
                      R
              end,
    ct:log("without a certificate: ~p", [Refused]),
    ?assertMatch({error, _}, Refused),
    {ok, S} = ssl:connect({127, 0, 0, 1}, Port, client_opts(Config, true), 10000),
    ok = ssl:send(S, route(2)),
    ?assertMatch(#{<<"id">> := 2, <<"result">> := _}, recv_json(S)),
    ssl:close(S),
    %% a token too: the certificate is not enough
    start([{transports, #{tcp => #{enabled => true, port => 0, tls => Tls, token => ?TOKEN}}}]),
    {ok, T} = ssl:connect({127, 0, 0, 1}, erlmcp_flow_transport:port(tcp), client_opts(Config, true), 10000),
    ok = ssl:send(T, route(3)),
    ?assertMatch(#{<<"error">> := #{<<"code">> := -32000}}, recv_json(T)),
    ssl:close(T).

%% /rpc, /health and /metrics over HTTPS, through httpc verifying the
%% node's certificate and name; a plain HTTP request to the port gets no
%% HTTP answer.
https_endpoints(Config) ->
    Tls = server_tls(Config),
    start([{transports, #{http => #{enabled => true, port => 0, tls => Tls}}},
           {metrics, #{http => true, port => 0, tls => Tls}}]),
    Ssl = [{ssl, lists:keydelete(active, 1, lists:keydelete(binary, 1, client_opts(Config, false)))}],
    Url = fun(P, Path) -> "https://localhost:" ++ integer_to_list(P) ++ Path end,
    HttpPort = erlmcp_flow_transport:port(http),
    {ok, {{_, 200, _}, _, Health}} = httpc:request(get, {Url(HttpPort, "/health"), []}, Ssl,
                                                   [{body_format, binary}]),
    ?assertMatch(#{<<"status">> := <<"ok">>}, erlmcp_flow_test_json:decode(Health)),
    {ok, Req} = erlmcp_flow_jsonrpc:encode({request, 1, <<"flow.route_task">>,
                                           #{task => #{}, requirements => #{capabilities => [<<"echo">>]}}}),
    {ok, {{_, 200, _}, _, Routed}} = httpc:request(post, {Url(HttpPort, "/rpc"), [], "application/json", Req},
                                                   Ssl, [{body_format, binary}]),
    ?assertMatch(#{<<"result">> := #{<<"agent_id">> := <<"echo-1">>}}, erlmcp_flow_test_json:decode(Routed)),
    {ok, {{_, 200, _}, _, Metrics}} = httpc:request(get, {Url(erlmcp_flow_metrics_http:port(), "/metrics"), []},
                                                    Ssl, [{body_format, binary}]),
    ?assertMatch({ok, _, _}, erlmcp_flow_test_prometheus:parse(Metrics)),
    {ok, Plain} = gen_tcp:connect({127, 0, 0, 1}, HttpPort, [binary, {active, false}]),
    ok = gen_tcp:send(Plain, <<"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n">>),
    Answer = gen_tcp:recv(Plain, 0, 5000),
    ct:log("plain HTTP to the HTTPS port: ~p", [Answer]),
    ?assertNotMatch({ok, <<"HTTP/1.1", _/binary>>}, Answer),
    gen_tcp:close(Plain).

%% An MCP server at an https URL (tests/mcp/https_server.py) becomes an
%% agent when its certificate is trusted (the spec's cacertfile) and
%% named right; without that CA the handshake fails and it does not.
mcp_over_https(Config) ->
    case erlmcp_flow_test_util:require(python, fun() -> os:find_executable("python3") =/= false end,
                                       "python3 is not installed") of
        {skip, _} = Skip -> Skip;
        ok -> mcp_over_https_run(Config)
    end.

mcp_over_https_run(Config) ->
    start([]),
    #{server := #{cert := Cert, key := Key}, client := #{cacerts := Trust}} = ?config(tls, Config),
    Script = filename:join([erlmcp_flow_test_util:repo_root("rebar.config"), "tests", "mcp", "https_server.py"]),
    Server = open_port({spawn_executable, os:find_executable("python3")},
                       [{args, [Script, Cert, Key]}, {line, 256}, binary, exit_status]),
    Port = receive {Server, {data, {eol, <<"PORT ", P/binary>>}}} -> binary_to_integer(P)
           after 20000 -> error(https_server_did_not_start)
           end,
    try
        Url = "https://localhost:" ++ integer_to_list(Port) ++ "/mcp",
        ok = erlmcp_flow_mcp:register_server(<<"secure">>, #{url => Url, tls => #{cacertfile => Trust}}, #{}),
        ?assertMatch({ok, #{<<"content">> := [#{<<"text">> := <<"{\"a\": 1}">>}]}, #{agent_id := <<"secure">>}},
                     erlmcp_flow:execute(#{tool => <<"echo">>, arguments => #{a => 1}},
                                         #{capabilities => [<<"tool:echo">>]})),
        %% the system's CAs do not know this one: no agent
        Untrusted = erlmcp_flow_mcp:register_server(<<"untrusted">>, #{url => Url}, #{timeout_ms => 5000}),
        ct:log("without the CA: ~p", [Untrusted]),
        ?assertMatch({error, _}, Untrusted),
        ?assertEqual({error, not_found}, erlmcp_flow:find_agent(<<"untrusted">>)),
        ?assertMatch({error, {badarg, {tls, _}}},
                     erlmcp_flow_mcp:register_server(<<"bad">>, #{url => Url, tls => #{verify => sometimes}}, #{}))
    after
        {os_pid, Pid} = erlang:port_info(Server, os_pid),
        _ = os:cmd("kill " ++ integer_to_list(Pid)),
        catch port_close(Server)
    end.
