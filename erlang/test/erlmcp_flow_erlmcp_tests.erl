-module(erlmcp_flow_erlmcp_tests).

-include_lib("eunit/include/eunit.hrl").

%% The erlmcp bridge against a stand-in registry (erlmcp_registry, test
%% code) and MCP servers that speak exactly the message protocol the bridge
%% expects: {mcp_message, TransportId, Json} in, {mcp_response, ServerId,
%% Json} out.
bridge_test_() ->
    {foreach,
     fun() ->
             Apps = erlmcp_flow_test_util:start(),
             {ok, _} = erlmcp_registry:start(),
             Apps
     end,
     fun(Apps) ->
             erlmcp_registry:stop(),
             erlmcp_flow_test_util:unregister_all(),
             erlmcp_flow_test_util:stop(Apps)
     end,
     [{"a server becomes an agent: handshake, tools/call, errors", fun one_server/0},
      {"register_all, a server that dies, a server not found", fun all_servers/0}]}.

without_erlmcp_test() ->
    Apps = erlmcp_flow_test_util:start(),
    try
        ?assertEqual({error, erlmcp_not_running}, erlmcp_flow_erlmcp:register_server(fs, [<<"x">>])),
        ?assertEqual({error, erlmcp_not_running}, erlmcp_flow_erlmcp:register_all(fun(_, _) -> [] end))
    after
        erlmcp_flow_test_util:stop(Apps)
    end.

%% An MCP server: answers initialize, records the initialized notification,
%% runs tools/call (`echo' returns its arguments, `fail' a JSON-RPC error).
server(Id, Parent) ->
    receive
        {mcp_message, T, Json} ->
            case erlmcp_flow_jsonrpc:decode(Json) of
                {single, {request, N, <<"initialize">>, #{<<"protocolVersion">> := V,
                                                          <<"clientInfo">> := #{<<"name">> := Name}}}} ->
                    Parent ! {initialize, Id, T, V, Name},
                    reply(Id, T, N, {ok, #{protocolVersion => V, capabilities => #{tools => #{}},
                                            serverInfo => #{name => Id}}});
                {single, {notification, <<"notifications/initialized">>, _}} ->
                    Parent ! {initialized, Id};
                {single, {request, N, <<"tools/call">>, #{<<"name">> := <<"echo">>,
                                                          <<"arguments">> := A}}} ->
                    reply(Id, T, N, {ok, #{content => [#{type => text, text => A}], server => Id}});
                {single, {request, N, <<"tools/call">>, #{<<"name">> := <<"fail">>}}} ->
                    reply(Id, T, N, {error, -32001, <<"tool failed">>, undefined});
                _ ->
                    ok
            end,
            server(Id, Parent);
        stop ->
            ok
    end.

reply(Id, T, N, Outcome) ->
    {ok, Json} = erlmcp_flow_jsonrpc:encode({response, N, Outcome}),
    {ok, {Proxy, _}} = maps:find(T, erlmcp_registry:transports()),
    Proxy ! {mcp_response, Id, Json}.

start_server(Id) ->
    Self = self(),
    Pid = spawn(fun() -> server(Id, Self) end),
    ok = erlmcp_registry:add_server(Id, Pid, #{tools => [echo, fail]}),
    Pid.

one_server() ->
    _ = start_server(fs),
    {ok, Proxy} = erlmcp_flow_erlmcp:register_server(fs, [<<"tool:echo">>, <<"tool:fail">>]),
    ?assert(is_pid(Proxy)),
    receive {initialize, fs, T, V, Name} ->
            ?assertEqual(<<"erlmcp_flow:fs">>, T),
            ?assertEqual(<<"2025-11-25">>, V),
            ?assertEqual(<<"erlmcp_flow">>, Name)
    after 2000 -> error(no_initialize)
    end,
    receive {initialized, fs} -> ok after 2000 -> error(no_initialized) end,
    ?assertEqual({ok, Proxy}, erlmcp_flow:find_agent(<<"fs">>)),
    ?assertMatch(#{<<"erlmcp_flow:fs">> := {Proxy, #{server_id := fs}}}, erlmcp_registry:transports()),
    {ok, Result, #{agent_id := <<"fs">>}} =
        erlmcp_flow:execute(#{<<"tool">> => <<"echo">>, <<"arguments">> => #{<<"path">> => <<"/tmp">>}},
                            #{capabilities => [<<"tool:echo">>]}),
    ?assertMatch(#{<<"content">> := [#{<<"text">> := #{<<"path">> := <<"/tmp">>}}],
                   <<"server">> := <<"fs">>}, Result),
    ?assertEqual({error, {agent_error, {mcp_error, -32001, <<"tool failed">>}}},
                 erlmcp_flow:execute(#{<<"tool">> => <<"fail">>}, #{capabilities => [<<"tool:fail">>],
                                                                     idempotent => false})),
    ?assertEqual({error, {agent_error, {badarg, task}}},
                 erlmcp_flow:execute(#{no => tool}, #{capabilities => [<<"tool:echo">>],
                                                      idempotent => false})),
    %% a second proxy for the same server is refused by erlmcp's registry
    ?assertMatch({error, _}, erlmcp_flow_erlmcp:register_server(fs, [<<"tool:echo">>])).

all_servers() ->
    A = start_server(a),
    _ = start_server(b),
    Results = erlmcp_flow_erlmcp:register_all(fun(Id, #{tools := Tools}) ->
                                                      [<<"server:", (atom_to_binary(Id))/binary>>
                                                       | [<<"tool:", (atom_to_binary(T))/binary>> || T <- Tools]]
                                              end),
    ?assertMatch([{a, {ok, _}}, {b, {ok, _}}], lists:sort(Results)),
    ?assertEqual([<<"a">>, <<"b">>], erlmcp_flow:query_agents([<<"tool:echo">>])),
    ?assertEqual({error, {server_not_found, nope}}, erlmcp_flow_erlmcp:register_server(nope, [<<"x">>])),
    %% the server dies: its agent goes
    {ok, ProxyA} = erlmcp_flow:find_agent(<<"a">>),
    MRef = erlang:monitor(process, ProxyA),
    exit(A, kill),
    receive {'DOWN', MRef, process, ProxyA, _} -> ok after 2000 -> error(proxy_stayed) end,
    erlmcp_flow_test_util:wait_until(fun() -> erlmcp_flow:query_agents([<<"tool:echo">>]) =:= [<<"b">>] end).
