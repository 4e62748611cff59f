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
      {"register_all, a server that dies, a server not found", fun all_servers/0},
      {timeout, 30, {"handshakes refused or garbled, ids of every type, a call cancelled", fun odd_servers/0}},
      {"unregistered: finishes its task in flight, gives its transport back, registers again",
       fun unregister_and_again/0},
      {"a server that dies during initialize answers at once", fun dies_during_initialize/0},
      {"a proxy stopped by its supervisor gives its transport back", fun supervisor_stops_proxy/0},
      {"erlmcp's answers to the caller's mistakes are refusals: the breaker stays closed",
       fun callers_mistakes/0}]}.

without_erlmcp_test() ->
    Apps = erlmcp_flow_test_util:start(),
    try
        ?assertEqual({error, erlmcp_not_running}, erlmcp_flow_erlmcp:register_server(fs, [<<"x">>])),
        ?assertEqual({error, erlmcp_not_running}, erlmcp_flow_erlmcp:register_all(fun(_, _) -> [] end))
    after
        erlmcp_flow_test_util:stop(Apps)
    end.

%% An MCP server: answers initialize once (as erlmcp_server does, a second
%% one from any transport is -32005), records the initialized notification,
%% runs tools/call (`echo' returns its arguments, `fail' a JSON-RPC error).
server(Id, Parent) ->
    server(Id, Parent, false).

server(Id, Parent, Initialized) ->
    receive
        {mcp_message, T, Json} ->
            Decoded = erlmcp_flow_jsonrpc:decode(Json),
            case Decoded of
                {single, {request, N, <<"initialize">>, _}} when Initialized ->
                    reply(Id, T, N, {error, -32005, <<"Server already initialized. Initialize must be "
                                                      "called only once.">>, undefined});
                {single, {request, N, <<"initialize">>, #{<<"protocolVersion">> := V,
                                                          <<"clientInfo">> := #{<<"name">> := Name}}}} ->
                    Parent ! {initialize, Id, T, V, Name},
                    reply(Id, T, N, {ok, #{protocolVersion => V, capabilities => #{tools => #{}},
                                            serverInfo => #{name => name(Id)}}});
                {single, {notification, <<"notifications/initialized">>, _}} ->
                    Parent ! {initialized, Id};
                {single, {request, N, <<"tools/call">>, #{<<"name">> := <<"echo">>,
                                                          <<"arguments">> := A}}} ->
                    reply(Id, T, N, {ok, #{content => [#{type => text, text => A}], server => name(Id)}});
                {single, {request, N, <<"tools/call">>, #{<<"name">> := <<"fail">>}}} ->
                    reply(Id, T, N, {error, -32001, <<"tool failed">>, undefined});
                {single, {request, N, <<"tools/call">>, #{<<"name">> := <<"hold">>}}} ->
                    %% answered when the test says so
                    Parent ! {held, Id, T, N};
                {single, {request, N, <<"tools/call">>, #{<<"name">> := <<"slow">>}}} ->
                    %% answered only after the caller gave up, and once more
                    %% under an id nobody waits for
                    Parent ! {slow_call, Id, N};
                {single, {request, N, <<"tools/call">>, #{<<"name">> := <<"strict">>,
                                                          <<"arguments">> := Args}}}
                  when not is_map_key(<<"path">>, Args) ->
                    %% erlmcp_server's answer to arguments its schema refuses
                    reply(Id, T, N, {error, -32007, <<"Validation failed">>, undefined});
                {single, {request, N, <<"tools/call">>, #{<<"name">> := <<"strict">>}}} ->
                    reply(Id, T, N, {ok, #{content => [], server => name(Id)}});
                {single, {request, N, <<"tools/call">>, #{<<"name">> := _}}} ->
                    %% erlmcp_server's answer to a tool it does not have
                    reply(Id, T, N, {error, -32002, <<"Tool not found">>, undefined});
                {single, {notification, <<"notifications/cancelled">>, #{<<"requestId">> := N}}} ->
                    Parent ! {cancelled, Id, N},
                    reply(Id, T, N, {ok, #{late => true}}),
                    reply(Id, T, N + 1000, {ok, #{stray => true}});
                _ ->
                    ok
            end,
            server(Id, Parent, Initialized orelse is_initialize(Decoded));
        stop ->
            ok
    end.

is_initialize({single, {request, _, <<"initialize">>, _}}) -> true;
is_initialize(_) -> false.

name(Id) when is_atom(Id); is_binary(Id) -> Id;
name(Id) -> iolist_to_binary(io_lib:format("~0p", [Id])).

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
    %% the caller's error: answered at once, not retried, not the server's fault
    ?assertEqual({error, {rejected, {badarg, task}}},
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

%% A server whose handshake answer is `Answer' (a JSON-RPC outcome, or
%% `garbage' for a message that is no answer at all).
handshake_server(Id, Answer) ->
    Pid = spawn(fun() ->
                        receive
                            {mcp_message, T, _Json} ->
                                {ok, {Proxy, _}} = maps:find(T, erlmcp_registry:transports()),
                                Bin = case Answer of
                                          garbage -> <<"{\"jsonrpc\":\"2.0\",\"method\":\"hello\"}">>;
                                          _ -> {ok, J} = erlmcp_flow_jsonrpc:encode({response, 1, Answer}), J
                                      end,
                                Proxy ! {mcp_response, Id, Bin},
                                receive stop -> ok end
                        end
                end),
    ok = erlmcp_registry:add_server(Id, Pid, #{}),
    Pid.

odd_servers() ->
    _ = handshake_server(refuser, {error, -32602, <<"unsupported version">>, undefined}),
    ?assertEqual({error, {mcp_initialize, -32602, <<"unsupported version">>}},
                 erlmcp_flow_erlmcp:register_server(refuser, [<<"x">>])),
    _ = handshake_server(garbled, garbage),
    ?assertMatch({error, {mcp_initialize, {single, {notification, <<"hello">>, _}}}},
                 erlmcp_flow_erlmcp:register_server(garbled, [<<"x">>])),
    %% ids that are binaries or other terms name the agent as text
    _ = start_server(<<"bin-server">>),
    {ok, _} = erlmcp_flow_erlmcp:register_server(<<"bin-server">>, [<<"tool:echo">>, <<"tool:slow">>]),
    _ = start_server({srv, 2}),
    {ok, Proxy} = erlmcp_flow_erlmcp:register_server({srv, 2}, [<<"tool:t2">>]),
    ?assertEqual({ok, Proxy}, erlmcp_flow:find_agent(<<"{srv,2}">>)),
    %% an agent id already taken: the proxy does not start
    ok = erlmcp_flow:register_agent(<<"taken">>, spawn(fun() -> receive stop -> ok end end), [<<"x">>]),
    _ = start_server(taken),
    ?assertEqual({error, already_registered}, erlmcp_flow_erlmcp:register_server(taken, [<<"x">>])),
    %% a task naming its tool by an atom key
    ?assertMatch({ok, #{<<"server">> := <<"bin-server">>}, _},
                 erlmcp_flow:execute(#{tool => echo, arguments => #{a => 1}}, #{capabilities => [<<"tool:echo">>]})),
    %% the caller stops waiting: the server is told; the late answers are dropped
    ?assertEqual({error, execution_timeout},
                 erlmcp_flow:execute(#{tool => slow}, #{capabilities => [<<"tool:slow">>], idempotent => false},
                                     #{timeout => 100})),
    receive {slow_call, <<"bin-server">>, N} ->
            receive {cancelled, <<"bin-server">>, C} -> ?assertEqual(N, C) after 2000 -> error(not_cancelled) end
    after 2000 -> error(no_call)
    end,
    {ok, BinProxy} = erlmcp_flow:find_agent(<<"bin-server">>),
    ?assertEqual({error, unknown_call}, gen_server:call(BinProxy, nonsense)),
    gen_server:cast(BinProxy, nonsense),
    BinProxy ! nonsense,
    ?assertMatch({ok, _, _}, erlmcp_flow:execute(#{tool => echo}, #{capabilities => [<<"tool:echo">>]})).

unregister_and_again() ->
    _ = start_server(fs),
    {ok, Proxy} = erlmcp_flow_erlmcp:register_server(fs, [<<"tool:echo">>, <<"tool:hold">>]),
    Self = self(),
    Caller = spawn_link(fun() ->
                                Self ! {answer, erlmcp_flow:execute(#{tool => hold},
                                                                    #{capabilities => [<<"tool:hold">>],
                                                                      idempotent => false})}
                        end),
    {T, N} = receive {held, fs, T0, N0} -> {T0, N0} after 2000 -> error({no_call, Caller}) end,
    MRef = erlang:monitor(process, Proxy),
    ok = erlmcp_flow:unregister_agent(<<"fs">>),
    ?assertEqual({error, not_found}, erlmcp_flow:find_agent(<<"fs">>)),
    %% told (the registry's message came before its reply): still there for
    %% its task in flight
    _ = sys:get_state(Proxy),
    ?assert(is_process_alive(Proxy)),
    ?assertMatch(#{<<"erlmcp_flow:fs">> := _}, erlmcp_registry:transports()),
    reply(fs, T, N, {ok, #{done => true}}),
    receive {answer, A} -> ?assertMatch({ok, #{<<"done">> := true}, #{agent_id := <<"fs">>}}, A)
    after 2000 -> error(no_answer)
    end,
    receive {'DOWN', MRef, process, Proxy, Why} -> ?assertEqual(normal, Why)
    after 2000 -> error(proxy_stayed)
    end,
    ?assertEqual(#{}, erlmcp_registry:transports()),
    %% the same server again
    {ok, Proxy2} = erlmcp_flow_erlmcp:register_server(fs, [<<"tool:echo">>]),
    ?assertNotEqual(Proxy, Proxy2),
    ?assertMatch({ok, _, #{agent_id := <<"fs">>}},
                 erlmcp_flow:execute(#{tool => echo, arguments => #{}}, #{capabilities => [<<"tool:echo">>]})).

dies_during_initialize() ->
    Pid = spawn(fun() -> receive {mcp_message, _, _} -> exit(crashed) end end),
    ok = erlmcp_registry:add_server(dying, Pid, #{}),
    ?assertEqual({error, {mcp_initialize, {server_down, crashed}}},
                 erlmcp_flow_erlmcp:register_server(dying, [<<"x">>])),
    ?assertEqual(#{}, erlmcp_registry:transports()),
    ?assertEqual({error, not_found}, erlmcp_flow:find_agent(<<"dying">>)).

supervisor_stops_proxy() ->
    _ = start_server(fs),
    {ok, Proxy} = erlmcp_flow_erlmcp:register_server(fs, [<<"tool:echo">>]),
    ?assertMatch(#{<<"erlmcp_flow:fs">> := {Proxy, _}}, erlmcp_registry:transports()),
    ok = supervisor:terminate_child(erlmcp_flow_erlmcp_sup, Proxy),
    ?assertEqual(#{}, erlmcp_registry:transports()),
    {ok, _} = erlmcp_flow_erlmcp:register_server(fs, [<<"tool:echo">>]).

callers_mistakes() ->
    _ = start_server(fs),
    {ok, _} = erlmcp_flow_erlmcp:register_server(fs, [<<"tool:echo">>, <<"tool:strict">>]),
    Unknown = fun() -> erlmcp_flow:execute(#{tool => <<"nope">>}, #{capabilities => [<<"tool:echo">>]}) end,
    Invalid = fun() -> erlmcp_flow:execute(#{tool => <<"strict">>, arguments => #{}},
                                           #{capabilities => [<<"tool:strict">>]}) end,
    [?assertEqual({error, {rejected, {mcp_error, -32002, <<"Tool not found">>}}}, Unknown())
     || _ <- lists:seq(1, 10)],
    [?assertEqual({error, {rejected, {mcp_error, -32007, <<"Validation failed">>}}}, Invalid())
     || _ <- lists:seq(1, 10)],
    %% twenty refusals, each answered once (no retry): the server is as good as before
    ?assertMatch({ok, #{breaker := closed, rejected := 20, failed := 0, dispatched := 20}},
                 erlmcp_flow:agent_stats(<<"fs">>)),
    ?assertMatch({ok, _, _}, erlmcp_flow:execute(#{tool => <<"strict">>, arguments => #{path => <<"/">>}},
                                                 #{capabilities => [<<"tool:strict">>]})).
