-module(erlmcp_flow_mcp_tests).

-include_lib("eunit/include/eunit.hrl").


%% erlmcp_flow as an MCP server over Streamable HTTP and over stdio, with
%% Erlang agents serving tools (the suite erlmcp_flow_mcp_SUITE runs real
%% MCP servers and the official Python SDK).

mcp_http_test_() ->
    {setup,
     fun() ->
             _ = application:stop(erlmcp_flow),
             {ok, _} = application:ensure_all_started(inets),
             _ = application:load(erlmcp_flow),
             ok = application:set_env(erlmcp_flow, transports, #{http => #{enabled => true, port => 0}}),
             Apps = erlmcp_flow_test_util:start(),
             ok = erlmcp_flow_mcp:declare_tool(<<"add">>, #{description => <<"a + b">>,
                                                            inputSchema => #{type => object,
                                                                             required => [<<"a">>, <<"b">>]},
                                                            annotations => #{idempotentHint => true}}),
             ok = erlmcp_flow:register_agent(<<"adder">>, spawn(fun adder/0), [<<"tool:add">>]),
             ok = erlmcp_flow:register_agent(<<"failer">>, spawn(fun failer/0), [<<"tool:fail">>]),
             Apps
     end,
     fun(Apps) ->
             erlmcp_flow_test_util:unregister_all(),
             erlmcp_flow_test_util:stop(Apps),
             application:unset_env(erlmcp_flow, transports)
     end,
     [{"initialize: a session, the version negotiated", fun initialize/0},
      {"sessions are required, unknown ones 404, DELETE ends one, GET is 405", fun sessions/0},
      {"tools/list: agents' tools with their schemas and the router's, paginated", fun tools_list/0},
      {"tools/call routes to an agent, with _meta and traceparent; failures are isError", fun tools_call/0},
      {"notifications/cancelled stops a call and cancels the agent's task", fun cancelled/0},
      {timeout, 60, {"sessions are bounded per client and per node: the least recently used idle "
                     "one ends, 503 only when all are busy", fun bounded/0}},
      {timeout, 60, {"an MCP server over a port as an agent (a Python one, standard library only)",
                     fun port_server/0}},
      {timeout, 60, {"an MCP server over Streamable HTTP as an agent: this node's own /mcp",
                     fun url_server/0}},
      {"register_server refuses bad arguments and missing commands", fun register_errors/0},
      {"batches, methods and headers /mcp does not take; the router's tools", fun edges/0},
      {"a body past the limit: the client reads the 413, its session goes on", fun oversize_body/0},
      {"a server's messages during a call reach the session (an Erlang MCP agent stands in)",
       fun relayed/0},
      {"the router's knowledge as resources; each version's shape of a tool", fun resources_and_versions/0},
      {"a client without an event stream is not asked; a server's cancellation reaches the client",
       fun relay_edges/0}]}.

url() ->
    "http://127.0.0.1:" ++ integer_to_list(erlmcp_flow_transport:port(http)) ++ "/mcp".

post(Json) ->
    post(Json, []).

post(Json, Headers) ->
    {ok, {{_, Status, _}, RespHeaders, Body}} =
        httpc:request(post, {url(), [{"accept", "application/json, text/event-stream"} | Headers],
                             "application/json", Json}, [], [{body_format, binary}]),
    {Status, RespHeaders, Body}.

msg(Id, Method, Params) ->
    {ok, B} = erlmcp_flow_jsonrpc:encode({request, Id, Method, Params}),
    B.

note(Method, Params) ->
    {ok, B} = erlmcp_flow_jsonrpc:encode({notification, Method, Params}),
    B.

session() ->
    session(<<"2025-11-25">>).

session(Version) ->
    {200, H, _} = post(msg(1, <<"initialize">>, #{protocolVersion => Version,
                                                   capabilities => #{},
                                                   clientInfo => #{name => <<"t">>, version => <<"1">>}})),
    Sid = proplists:get_value("mcp-session-id", H),
    {202, _, <<>>} = post(note(<<"notifications/initialized">>, #{}), [{"mcp-session-id", Sid}]),
    Sid.

call(Sid, Id, Method, Params) ->
    {200, _, Body} = post(msg(Id, Method, Params), [{"mcp-session-id", Sid},
                                                    {"mcp-protocol-version", "2025-11-25"}]),
    erlmcp_flow_test_json:decode(Body).

initialize() ->
    {200, H, Body} = post(msg(1, <<"initialize">>, #{protocolVersion => <<"2025-06-18">>,
                                                      capabilities => #{},
                                                      clientInfo => #{name => <<"t">>, version => <<"1">>}})),
    ?assertMatch(#{<<"result">> := #{<<"protocolVersion">> := <<"2025-06-18">>,
                                     <<"capabilities">> := #{<<"tools">> := #{<<"listChanged">> := true}},
                                     <<"serverInfo">> := #{<<"name">> := <<"erlmcp_flow">>}}},
                 erlmcp_flow_test_json:decode(Body)),
    ?assertMatch([_ | _], proplists:get_value("mcp-session-id", H)),
    %% a version this server does not speak: it answers its newest
    {200, _, B2} = post(msg(1, <<"initialize">>, #{protocolVersion => <<"1999-01-01">>})),
    ?assertMatch(#{<<"result">> := #{<<"protocolVersion">> := <<"2025-11-25">>}},
                 erlmcp_flow_test_json:decode(B2)).

sessions() ->
    ?assertMatch({400, _, _}, post(msg(2, <<"tools/list">>, #{}))),
    ?assertMatch({404, _, _}, post(msg(2, <<"tools/list">>, #{}), [{"mcp-session-id", "nope"}])),
    Sid = session(),
    ?assertMatch({400, _, _}, post(msg(2, <<"tools/list">>, #{}), [{"mcp-session-id", Sid},
                                                                   {"mcp-protocol-version", "2001-01-01"}])),
    ?assertMatch(#{<<"result">> := #{}}, call(Sid, 2, <<"ping">>, #{})),
    ?assertMatch(#{<<"error">> := #{<<"code">> := -32601}}, call(Sid, 3, <<"prompts/list">>, #{})),
    {ok, {{_, 405, _}, _, _}} = httpc:request(get, {url(), [{"mcp-session-id", Sid}]}, [], []),
    {ok, {{_, 200, _}, _, _}} = httpc:request(delete, {url(), [{"mcp-session-id", Sid}]}, [], []),
    ?assertMatch({404, _, _}, post(msg(4, <<"ping">>, #{}), [{"mcp-session-id", Sid}])),
    %% not JSON at all: a parse error
    {400, _, Bad} = post(<<"{nope">>),
    ?assertMatch(#{<<"error">> := #{<<"code">> := -32700}}, erlmcp_flow_test_json:decode(Bad)).

tools_list() ->
    Sid = session(),
    #{<<"result">> := #{<<"tools">> := Tools}} = call(Sid, 2, <<"tools/list">>, #{}),
    Names = [N || #{<<"name">> := N} <- Tools],
    ?assertEqual([<<"flow_route_task">>, <<"flow_explain">>, <<"flow_stats">>, <<"flow_trace">>,
                  <<"add">>, <<"fail">>], Names),
    [Add] = [T || #{<<"name">> := <<"add">>} = T <- Tools],
    ?assertMatch(#{<<"inputSchema">> := #{<<"required">> := [<<"a">>, <<"b">>]},
                   <<"annotations">> := #{<<"idempotentHint">> := true},
                   <<"description">> := <<"a + b">>}, Add),
    [Fail] = [T || #{<<"name">> := <<"fail">>} = T <- Tools],
    ?assertEqual(#{<<"type">> => <<"object">>}, maps:get(<<"inputSchema">>, Fail)),
    %% 60 more tools: two pages
    Many = [spawn(fun adder/0) || _ <- lists:seq(1, 60)],
    [ok = erlmcp_flow:register_agent(<<"many-", (integer_to_binary(I))/binary>>, P,
                                     [<<"tool:t", (integer_to_binary(I))/binary>>])
     || {I, P} <- lists:zip(lists:seq(1, 60), Many)],
    #{<<"result">> := #{<<"tools">> := P1, <<"nextCursor">> := C}} = call(Sid, 3, <<"tools/list">>, #{}),
    #{<<"result">> := R2} = call(Sid, 4, <<"tools/list">>, #{cursor => C}),
    ?assertEqual(50, length(P1)),
    ?assertEqual(66, length(P1) + length(maps:get(<<"tools">>, R2))),
    ?assertNot(is_map_key(<<"nextCursor">>, R2)),
    ?assertMatch(#{<<"error">> := #{<<"code">> := -32602}},
                 call(Sid, 5, <<"tools/list">>, #{cursor => <<"!!">>})),
    [ok = erlmcp_flow:unregister_agent(<<"many-", (integer_to_binary(I))/binary>>) || I <- lists:seq(1, 60)].

tools_call() ->
    Sid = session(),
    #{<<"result">> := R} = call(Sid, 2, <<"tools/call">>, #{name => <<"add">>,
                                                            arguments => #{a => 2, b => 3}}),
    ?assertMatch(#{<<"isError">> := false, <<"structuredContent">> := #{<<"sum">> := 5},
                   <<"content">> := [#{<<"type">> := <<"text">>}],
                   <<"_meta">> := #{<<"erlmcp_flow">> := #{<<"agent_id">> := <<"adder">>,
                                                           <<"attempts">> := 1}}}, R),
    %% the caller's trace joined through _meta
    TraceId = <<"4bf92f3577b34da6a3ce929d0e0e4736">>,
    #{<<"result">> := R2} = call(Sid, 3, <<"tools/call">>,
                                #{name => <<"add">>, arguments => #{a => 1, b => 1},
                                  '_meta' => #{traceparent => <<"00-", TraceId/binary, "-00f067aa0ba902b7-01">>}}),
    ?assertMatch(#{<<"_meta">> := #{<<"erlmcp_flow">> := #{<<"trace_id">> := TraceId}}}, R2),
    %% a tool that fails: a result with isError (not idempotent: one attempt)
    #{<<"result">> := R3} = call(Sid, 4, <<"tools/call">>, #{name => <<"fail">>, arguments => #{}}),
    ?assertMatch(#{<<"isError">> := true, <<"_meta">> := #{<<"erlmcp_flow">> := #{<<"attempts">> := 1}}}, R3),
    [#{<<"text">> := Text}] = maps:get(<<"content">>, R3),
    ?assertNotEqual(nomatch, binary:match(Text, <<"boom">>)),
    ?assertMatch(#{<<"error">> := #{<<"code">> := -32602}},
                 call(Sid, 5, <<"tools/call">>, #{name => <<"nope">>, arguments => #{}})),
    ?assertMatch(#{<<"error">> := #{<<"code">> := -32602}},
                 call(Sid, 6, <<"tools/call">>, #{name => <<"add">>, arguments => [1]})),
    %% the router's own tools
    #{<<"result">> := S} = call(Sid, 7, <<"tools/call">>, #{name => <<"flow_stats">>, arguments => #{}}),
    ?assertMatch(#{<<"isError">> := false, <<"structuredContent">> := #{<<"agents">> := _}}, S),
    %% a server's tool error is the caller's: passed on verbatim, at once
    %% (an idempotent tool: no retry), and ten of them leave the server in
    %% service for every client
    ok = erlmcp_flow_mcp:declare_tool(<<"strict">>, #{annotations => #{idempotentHint => true}}),
    ok = erlmcp_flow:register_agent(<<"strict">>, spawn(fun strict/0), [<<"tool:strict">>]),
    [begin
         #{<<"result">> := E} = call(Sid, 100 + I, <<"tools/call">>,
                                     #{name => <<"strict">>, arguments => #{n => I}}),
         ?assertMatch(#{<<"isError">> := true,
                        <<"content">> := [#{<<"type">> := <<"text">>, <<"text">> := <<"n must be even">>}],
                        <<"_meta">> := #{<<"erlmcp_flow">> := #{<<"attempts">> := 1,
                                                                <<"agent_id">> := <<"strict">>}}}, E)
     end || I <- lists:seq(1, 21, 2)],
    ?assertMatch({ok, #{breaker := closed, rejected := 11, failed := 0}},
                 erlmcp_flow:agent_stats(<<"strict">>)),
    #{<<"result">> := Good} = call(Sid, 200, <<"tools/call">>, #{name => <<"strict">>,
                                                               arguments => #{n => 2}}),
    ?assertMatch(#{<<"isError">> := false}, Good),
    ok = erlmcp_flow:unregister_agent(<<"strict">>).

cancelled() ->
    Self = self(),
    ok = erlmcp_flow:register_agent(<<"sleeper">>, spawn(fun() -> sleeper(Self) end), [<<"tool:sleep">>]),
    Sid = session(),
    spawn_link(fun() ->
                       Self ! {answer, call(Sid, 77, <<"tools/call">>, #{name => <<"sleep">>, arguments => #{}})}
               end),
    receive {sleeping, _} -> ok after 5000 -> error(no_task) end,
    %% on a connection of its own (httpc would queue it behind the call)
    {ok, _} = inets:start(httpc, [{profile, mcp_cancel}]),
    {ok, {{_, 202, _}, _, _}} =
        httpc:request(post, {url(), [{"mcp-session-id", Sid}], "application/json",
                             note(<<"notifications/cancelled">>, #{requestId => 77, reason => <<"user">>})},
                      [], [], mcp_cancel),
    inets:stop(httpc, mcp_cancel),
    receive {answer, A} -> ?assertMatch(#{<<"id">> := 77, <<"error">> := #{<<"code">> := -32800}}, A)
    after 5000 -> error(no_answer)
    end,
    receive {cancelled, _} -> ok after 5000 -> error(agent_not_cancelled) end,
    ok = erlmcp_flow:unregister_agent(<<"sleeper">>).

bounded() ->
    Tab = erlmcp_flow_mcp_sessions,
    Now = erlang:monotonic_time(millisecond),
    Row = fun(I, Client) -> {<<"fake-", (integer_to_binary(I))/binary>>, <<"2025-11-25">>,
                             Now - 100000 + I, Client, #{level => undefined, caps => #{}}}
          end,
    Init = fun() -> post(msg(1, <<"initialize">>, #{protocolVersion => <<"2025-11-25">>})) end,
    Clean = fun() -> ets:select_delete(Tab, [{{'$1', '_', '_', '_', '_'}, [{is_binary, '$1'}], [true]}]),
                     ets:match_delete(Tab, {{'_', 1}, '_'})
            end,
    %% a client at its own bound (1 000 sessions): its least recently used
    %% idle session ends, and it gets in
    ets:insert(Tab, [Row(I, {127, 0, 0, 1}) || I <- lists:seq(1, 1000)]),
    ?assertMatch({200, _, _}, Init()),
    ?assertEqual([], ets:lookup(Tab, <<"fake-1">>)),
    ?assertMatch([_], ets:lookup(Tab, <<"fake-2">>)),
    Clean(),
    %% the node at its bound (10 000), the sessions of another client: the
    %% least recently used one with nothing in flight ends
    ets:insert(Tab, [Row(I, {10, 0, 0, 1}) || I <- lists:seq(1, 10000)]),
    ets:insert(Tab, {{<<"fake-1">>, 1}, self()}),
    ?assertMatch({200, _, _}, Init()),
    ?assertMatch([_], ets:lookup(Tab, <<"fake-1">>)),
    ?assertEqual([], ets:lookup(Tab, <<"fake-2">>)),
    ?assertEqual(10000, erlmcp_flow_mcp_http:sessions()),
    %% every session busy: none can end, 503
    ets:insert(Tab, [{{Sid, 1}, self()} || Sid <- ets:select(Tab, [{{'$1', '_', '_', '_', '_'},
                                                                  [{is_binary, '$1'}], ['$1']}])]),
    try
        {503, _, Body} = Init(),
        ?assertMatch(#{<<"error">> := #{<<"message">> := <<"Too many MCP sessions", _/binary>>}},
                     erlmcp_flow_test_json:decode(Body))
    after
        Clean()
    end,
    ?assertMatch({200, _, _}, Init()).

python_server() ->
    Script = filename:join(erlmcp_flow_test_util:repo_root("tests/mcp/conformance_tools.py"),
                           "tests/mcp/conformance_tools.py"),
    [os:find_executable("python3"), Script].

port_server() ->
    ok = erlmcp_flow_mcp:register_server(<<"py">>, #{command => python_server()},
                                         #{capabilities => [<<"lang:python">>]}),
    [#{id := <<"py">>, status := ready, tools := Tools, os_pid := OsPid}] =
        [S || #{id := <<"py">>} = S <- erlmcp_flow_mcp:servers()],
    ?assert(is_integer(OsPid)),
    ?assert(lists:member(<<"test_simple_text">>, Tools)),
    ?assertMatch([<<"lang:python">>, <<"mcp_server">> | _],
                 lists:sort(element(4, lists:keyfind(<<"py">>, 1, erlmcp_flow_registry:list_agents())))),
    {ok, #{<<"content">> := [#{<<"text">> := <<"This is a simple text response for testing.">>}]}, _} =
        erlmcp_flow:execute(#{tool => <<"test_simple_text">>, arguments => #{}},
                            #{capabilities => [<<"tool:test_simple_text">>]}),
    ?assertMatch({error, {rejected, {tool_error, #{<<"isError">> := true}}}},
                 erlmcp_flow:execute(#{tool => <<"test_error_handling">>, arguments => #{}},
                                     #{capabilities => [<<"tool:test_error_handling">>], idempotent => false})),
    %% a task that is not a tool call
    ?assertMatch({error, {rejected, {bad_task, _, _}}},
                 erlmcp_flow:execute(#{n => 1}, #{capabilities => [<<"lang:python">>], idempotent => false})),
    ?assertEqual({error, already_registered},
                 erlmcp_flow_mcp:register_server(<<"py">>, #{command => python_server()}, #{})),
    ok = erlmcp_flow_mcp:unregister_server(<<"py">>),
    ?assertEqual({error, not_found}, erlmcp_flow_mcp:unregister_server(<<"py">>)),
    ?assertEqual({error, not_found}, erlmcp_flow:find_agent(<<"py">>)).

url_server() ->
    ok = erlmcp_flow_mcp:register_server(<<"self">>, #{url => url()}, #{}),
    [#{status := ready, tools := Tools}] = [S || #{id := <<"self">>} = S <- erlmcp_flow_mcp:servers()],
    ?assert(lists:member(<<"flow_stats">>, Tools)),
    %% only the agent holds tool:flow_stats: the call goes out over HTTP and
    %% comes back to this node's MCP front
    {ok, #{<<"structuredContent">> := #{<<"agents">> := _}}, #{agent_id := <<"self">>}} =
        erlmcp_flow:execute(#{tool => <<"flow_stats">>, arguments => #{}},
                            #{capabilities => [<<"tool:flow_stats">>]}),
    ok = erlmcp_flow_mcp:unregister_server(<<"self">>).

register_errors() ->
    Cmd = #{command => python_server()},
    ?assertEqual({error, {badarg, {server_id, <<>>}}}, erlmcp_flow_mcp:register_server(<<>>, Cmd, #{})),
    ?assertEqual({error, {badarg, opts}}, erlmcp_flow_mcp:register_server(<<"x">>, Cmd, [])),
    ?assertMatch({error, {badarg, {command, _}}},
                 erlmcp_flow_mcp:register_server(<<"x">>, #{command => [42]}, #{})),
    ?assertMatch({error, {badarg, {url, _}}},
                 erlmcp_flow_mcp:register_server(<<"x">>, #{url => "ftp://host/x"}, #{})),
    ?assertMatch({error, {badarg, {spec, _}}}, erlmcp_flow_mcp:register_server(<<"x">>, #{}, #{})),
    ?assertMatch({error, {badarg, {capabilities, _}}},
                 erlmcp_flow_mcp:register_server(<<"x">>, Cmd, #{capabilities => [1]})),
    ?assertMatch({error, {command_not_found, _}},
                 erlmcp_flow_mcp:register_server(<<"x">>, #{command => ["no-such-mcp-server-here"]}, #{})),
    ?assertEqual({error, {badarg, name}}, erlmcp_flow_mcp:declare_tool(<<>>, #{})),
    ?assertEqual({error, {badarg, tool}}, erlmcp_flow_mcp:declare_tool(<<"t">>, nope)),
    ?assertEqual(ok, erlmcp_flow_mcp:await_configured(100)),
    ?assertEqual([], [S || #{id := <<"x">>} = S <- erlmcp_flow_mcp:servers()]).

edges() ->
    %% batches: refused from 2025-06-18 on
    Sid0 = session(),
    {400, _, B0} = post(iolist_to_binary([$[, msg(10, <<"ping">>, #{}), $]]), [{"mcp-session-id", Sid0}]),
    ?assertMatch(#{<<"id">> := null, <<"error">> := #{<<"code">> := -32600}}, erlmcp_flow_test_json:decode(B0)),
    Sid = session(<<"2025-03-26">>),
    H = [{"mcp-session-id", Sid}],
    %% a batch: requests answered in a list, notifications and responses not,
    %% an invalid item answered with its error
    Batch = iolist_to_binary([$[, lists:join($,, [msg(10, <<"ping">>, #{}),
                                                   note(<<"notifications/progress">>, #{}),
                                                   <<"{\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{}}">>,
                                                   <<"{\"jsonrpc\":\"2.0\",\"id\":11}">>,
                                                   msg(12, <<"tools/call">>, #{arguments => #{}})]), $]]),
    {200, _, B} = post(Batch, H),
    ?assertMatch([#{<<"id">> := 10, <<"result">> := #{}},
                  #{<<"id">> := 11, <<"error">> := #{<<"code">> := -32600}},
                  #{<<"id">> := 12, <<"error">> := #{<<"code">> := -32602}}],
                 erlmcp_flow_test_json:decode(B)),
    %% a batch of notifications only, a cancellation of nothing: 202
    Notes = iolist_to_binary([$[, note(<<"notifications/cancelled">>, #{requestId => 999}), $,,
                              note(<<"notifications/progress">>, #{}), $]]),
    ?assertMatch({202, _, <<>>}, post(Notes, H)),
    %% other methods; DELETE without a session; a foreign Origin
    {ok, {{_, 405, _}, _, _}} = httpc:request(put, {url(), H, "application/json", <<"{}">>}, [], []),
    {ok, {{_, 400, _}, _, _}} = httpc:request(delete, {url(), []}, [], []),
    ?assertMatch({403, _, _}, post(msg(13, <<"ping">>, #{}), [{"origin", "http://evil.example"} | H])),
    %% the router's tools: routing, explaining, a trace, an error as isError
    #{<<"result">> := Routed} = call(Sid, 14, <<"tools/call">>,
                                     #{name => <<"flow_route_task">>,
                                       arguments => #{task => #{a => 1, b => 2},
                                                      requirements => #{capabilities => [<<"tool:add">>]}}}),
    ?assertMatch(#{<<"isError">> := false, <<"structuredContent">> := #{<<"agent_id">> := <<"adder">>,
                                                                          <<"trace_id">> := _}}, Routed),
    TraceId = maps:get(<<"trace_id">>, maps:get(<<"structuredContent">>, Routed)),
    #{<<"result">> := Explained} = call(Sid, 15, <<"tools/call">>,
                                        #{name => <<"flow_explain">>, arguments => #{capabilities => [<<"tool:add">>]}}),
    ?assertMatch(#{<<"isError">> := false, <<"structuredContent">> := #{}}, Explained),
    #{<<"result">> := Traced} = call(Sid, 16, <<"tools/call">>,
                                     #{name => <<"flow_trace">>, arguments => #{trace_id => TraceId}}),
    ?assertMatch(#{<<"isError">> := false}, Traced),
    #{<<"result">> := Refused} = call(Sid, 17, <<"tools/call">>,
                                      #{name => <<"flow_route_task">>,
                                        arguments => #{task => #{}, requirements => #{capabilities => [<<"nobody">>]}}}),
    ?assertMatch(#{<<"isError">> := true, <<"structuredContent">> := #{<<"error">> := _}}, Refused),
    %% _meta that is not an object is ignored
    #{<<"result">> := R} = call(Sid, 18, <<"tools/call">>, #{name => <<"add">>, arguments => #{a => 1, b => 2},
                                                             '_meta' => 7}),
    ?assertMatch(#{<<"structuredContent">> := #{<<"sum">> := 3}}, R),
    %% a cursor that decodes to a negative offset
    ?assertMatch(#{<<"error">> := #{<<"code">> := -32602}},
                 call(Sid, 19, <<"tools/list">>, #{cursor => base64:encode(<<"-5">>)})).

%% bin/erlmcp-flow stdio --mcp as a host runs it.
stdio_test_() ->
    {timeout, 60, fun stdio/0}.

stdio() ->
    Root = erlmcp_flow_test_util:repo_root("bin/erlmcp-flow"),
    Dir = filename:join(Root, "_build/test/mcp-stdio"),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    Input = filename:join(Dir, "input"),
    ok = file:write_file(Input, [msg(1, <<"tools/list">>, #{}), $\n,
                                 msg(2, <<"initialize">>, #{protocolVersion => <<"2025-06-18">>}), $\n,
                                 note(<<"notifications/initialized">>, #{}), $\n,
                                 msg(3, <<"tools/list">>, #{}), $\n,
                                 msg(4, <<"tools/call">>, #{name => <<"flow_stats">>, arguments => #{}}), $\n,
                                 msg(5, <<"tools/call">>, #{name => <<"nope">>}), $\n,
                                 <<"{oops\n">>]),
    Cmd = lists:flatten(io_lib:format("~s stdio --mcp < ~s 2>/dev/null; echo \"exit=$?\"",
                                      [filename:join(Root, "bin/erlmcp-flow"), Input])),
    Lines = string:split(string:trim(os:cmd(Cmd)), "\n", all),
    {Json, ["exit=0"]} = lists:split(length(Lines) - 1, Lines),
    ById = maps:from_list([{maps:get(<<"id">>, A), A}
                           || L <- Json, A <- [erlmcp_flow_test_json:decode(list_to_binary(L))]]),
    ?assertMatch(#{<<"error">> := #{<<"code">> := -32600}}, maps:get(1, ById)),
    ?assertMatch(#{<<"result">> := #{<<"protocolVersion">> := <<"2025-06-18">>}}, maps:get(2, ById)),
    ?assertMatch(#{<<"result">> := #{<<"tools">> := [_, _, _, _]}}, maps:get(3, ById)),
    ?assertMatch(#{<<"result">> := #{<<"isError">> := false}}, maps:get(4, ById)),
    ?assertMatch(#{<<"error">> := #{<<"code">> := -32602}}, maps:get(5, ById)),
    ?assertMatch(#{<<"error">> := #{<<"code">> := -32700}}, maps:get(null, ById)).

%% Agents

adder() ->
    receive
        {execute_task, #{tool := <<"add">>, arguments := #{<<"a">> := A, <<"b">> := B}}, _, From, Ref} ->
            From ! {task_result, Ref, {ok, #{sum => A + B}}};
        {execute_task, _, _, From, Ref} ->
            From ! {task_result, Ref, {ok, #{}}}
    end,
    adder().

%% A tool that refuses odd numbers as an MCP server would: a result with
%% isError, refused as the caller's error.
strict() ->
    receive
        {execute_task, #{arguments := #{<<"n">> := N}}, _, From, Ref} when N rem 2 =:= 1 ->
            From ! {task_result, Ref, {reject, {tool_error, #{<<"content">> => [#{<<"type">> => <<"text">>,
                                                                               <<"text">> => <<"n must be even">>}],
                                                            <<"isError">> => true}}}};
        {execute_task, _, _, From, Ref} ->
            From ! {task_result, Ref, {ok, #{<<"content">> => [], <<"isError">> => false}}}
    end,
    strict().

failer() ->
    receive
        {execute_task, _, _, From, Ref} -> From ! {task_result, Ref, {error, boom}}
    end,
    failer().

sleeper(Test) ->
    receive
        {execute_task, _, _, _From, Ref} ->
            Test ! {sleeping, Ref},
            receive {cancel_task, Ref} -> Test ! {cancelled, Ref} end
    end,
    sleeper(Test).

%% A client that sends a whole body past the limit in one write (as the
%% Python SDK does) reads the 413 (no reset: what it sent is read and
%% dropped after the answer), and its session serves the next call.
oversize_body() ->
    Sid = session(),
    Port = erlmcp_flow_transport:port(http),
    Max = erlmcp_flow_config:get(transports, max_message_bytes),
    Body = iolist_to_binary([<<"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{\"x\":\"">>,
                             binary:copy(<<"x">>, 2 * Max), <<"\"}}">>]),
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}]),
    ok = gen_tcp:send(S, ["POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                          "accept: application/json, text/event-stream\r\nmcp-session-id: ", Sid,
                          "\r\ncontent-length: ", integer_to_list(byte_size(Body)), "\r\n\r\n", Body]),
    {ok, Answer} = recv_all(S, <<>>),
    ?assertMatch(<<"HTTP/1.1 413 ", _/binary>>, Answer),
    gen_tcp:close(S),
    ?assertMatch(#{<<"result">> := #{}}, call(Sid, 2, <<"ping">>, #{})).

recv_all(S, Acc) ->
    case gen_tcp:recv(S, 0, 10000) of
        {ok, D} -> recv_all(S, <<Acc/binary, D/binary>>);
        {error, closed} -> {ok, Acc};
        {error, Why} -> {error, Why, Acc}
    end.

%% An agent speaking for an MCP server: during the call it sends progress
%% for the token erlmcp_flow gave, a log message, and a sampling request;
%% the session (over Streamable HTTP, answered as an event stream) gets the
%% progress with its own token and the log message at its level, answers
%% the request, and the answer reaches the agent, which then answers the
%% call.
relayed() ->
    Agent = spawn(fun erlmcp_flow_test_util:relaying_agent/0),
    ok = erlmcp_flow:register_agent(<<"relayer">>, Agent, [<<"tool:relay">>]),
    try
        {200, H, _} = post(msg(1, <<"initialize">>, #{protocolVersion => <<"2025-11-25">>,
                                                       capabilities => #{sampling => #{}},
                                                       clientInfo => #{name => <<"t">>, version => <<"1">>}})),
        Sid = proplists:get_value("mcp-session-id", H),
        SH = [{"mcp-session-id", Sid}],
        ?assertMatch(#{<<"result">> := #{}}, call(Sid, 2, <<"logging/setLevel">>, #{level => <<"warning">>})),
        %% the call, on a connection of its own: its answer is a stream
        Port = erlmcp_flow_transport:port(http),
        {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}]),
        Call = msg(3, <<"tools/call">>, #{name => <<"relay">>, arguments => #{},
                                         '_meta' => #{progressToken => <<"mine">>}}),
        ok = gen_tcp:send(S, ["POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                              "accept: application/json, text/event-stream\r\nmcp-session-id: ", Sid,
                              "\r\ncontent-length: ", integer_to_list(byte_size(Call)), "\r\n\r\n", Call]),
        %% the sampling request comes on the stream; answered by a POST
        {Head, Events0} = stream_until(S, <<"sampling/createMessage">>, <<>>),
        ?assertNotEqual(nomatch, binary:match(Head, <<"text/event-stream">>)),
        ?assertNotEqual(nomatch, binary:match(Head, <<"transfer-encoding: chunked">>)),
        [Progress, Warning, Ask] = [erlmcp_flow_test_json:decode(D) || D <- Events0],
        ?assertMatch(#{<<"method">> := <<"notifications/progress">>,
                       <<"params">> := #{<<"progressToken">> := <<"mine">>, <<"progress">> := 1}}, Progress),
        %% the debug message was below the session's level: not sent
        ?assertMatch(#{<<"method">> := <<"notifications/message">>,
                       <<"params">> := #{<<"level">> := <<"warning">>}}, Warning),
        #{<<"id">> := AskId, <<"method">> := <<"sampling/createMessage">>} = Ask,
        {ok, Reply} = erlmcp_flow_jsonrpc:encode({response, AskId, {ok, #{role => assistant,
                                                                         content => #{type => text, text => <<"hi">>},
                                                                         model => <<"m">>}}}),
        ?assertMatch({202, _, _}, post(Reply, SH)),
        {_, [Final]} = stream_until(S, <<"\"id\":3">>, <<>>),
        ?assertMatch(#{<<"id">> := 3, <<"result">> := #{<<"content">> := [#{<<"text">> := <<"sampled: hi">>}]}},
                     erlmcp_flow_test_json:decode(Final)),
        gen_tcp:close(S),
        %% a client that did not declare sampling is not asked: the agent
        %% gets -32601 and says so in its answer
        %% (its log messages come first: the answer is a stream, the
        %% response its last event)
        Sid2 = session(),
        {200, H2, Body2} = post(msg(4, <<"tools/call">>, #{name => <<"relay">>, arguments => #{}}),
                                [{"mcp-session-id", Sid2}]),
        ?assertEqual("text/event-stream", proplists:get_value("content-type", H2)),
        {_, Datas} = events(Body2),
        ?assertMatch([#{<<"method">> := <<"notifications/message">>},
                      #{<<"method">> := <<"notifications/message">>},
                      #{<<"id">> := 4, <<"result">> := #{<<"content">> := [#{<<"text">> := <<"refused: -32601">>}]}}],
                     [erlmcp_flow_test_json:decode(D) || D <- Datas])
    after
        erlmcp_flow:unregister_agent(<<"relayer">>),
        exit(Agent, kill)
    end.

%% Events read from a chunked event stream until one holds `Until': what
%% came before the first event (the head, on the first read) and the
%% events' data.
stream_until(S, Until, Acc) ->
    {ok, D} = gen_tcp:recv(S, 0, 10000),
    All = <<Acc/binary, D/binary>>,
    %% the event that holds it read whole (the stream's last chunk is whole)
    Whole = fun({Pos, _}) -> Until =:= <<"0\r\n\r\n">> orelse
                                 binary:match(All, <<"\n\n">>, [{scope, {Pos, byte_size(All) - Pos}}]) =/= nomatch
            end,
    case binary:match(All, Until) of
        nomatch ->
            stream_until(S, Until, All);
        Found ->
            case Whole(Found) of
                false -> stream_until(S, Until, All);
                true -> events(All)
            end
    end.

events(All) ->
    Head = hd(binary:split(All, <<"event: ">>)),
    {Head, [string:trim(Data) || L <- binary:split(All, <<"\n">>, [global]),
                                 <<"data: ", Data/binary>> <- [L]]}.


resources_and_versions() ->
    Sid = session(),
    {ok, _, _} = erlmcp_flow:execute(#{a => 1, b => 2}, #{capabilities => [<<"tool:add">>]}),
    #{<<"result">> := #{<<"resources">> := Rs}} = call(Sid, 2, <<"resources/list">>, #{}),
    ?assert(lists:member(<<"erlmcp-flow://tools/add">>, [U || #{<<"uri">> := U} <- Rs])),
    ?assertMatch(#{<<"result">> := #{<<"resourceTemplates">> := [#{<<"uriTemplate">> := <<"erlmcp-flow://tools/{name}">>}]}},
                 call(Sid, 3, <<"resources/templates/list">>, #{})),
    #{<<"result">> := #{<<"contents">> := [#{<<"text">> := Text}]}} =
        call(Sid, 4, <<"resources/read">>, #{uri => <<"erlmcp-flow://tools/add">>}),
    ?assertMatch(#{<<"tool">> := <<"add">>, <<"servers">> := [#{<<"agent_id">> := <<"adder">>}],
                   <<"learned_preference">> := [#{<<"id">> := <<"adder">>}]},
                 erlmcp_flow_test_json:decode(Text)),
    ?assertMatch(#{<<"error">> := #{<<"code">> := -32002}},
                 call(Sid, 5, <<"resources/read">>, #{uri => <<"erlmcp-flow://tools/nope">>})),
    ?assertMatch(#{<<"error">> := #{<<"code">> := -32002}},
                 call(Sid, 6, <<"resources/read">>, #{uri => <<"file:///etc/passwd">>})),
    ?assertMatch(#{<<"error">> := #{<<"code">> := -32602}}, call(Sid, 7, <<"resources/read">>, #{})),
    %% a tool with what later versions added: each version sees its own
    ok = erlmcp_flow_mcp:declare_tool(<<"fancy">>, #{title => <<"Fancy">>, description => <<"f">>,
                                                     outputSchema => #{type => object},
                                                     icons => [#{src => <<"https://x/i.png">>}]}),
    ok = erlmcp_flow:register_agent(<<"fancy">>, erlmcp_flow_test_util:echo_agent(), [<<"tool:fancy">>]),
    try
        Fancy = fun(Version) ->
                        S = session(Version),
                        {200, _, B} = post(msg(8, <<"tools/list">>, #{}), [{"mcp-session-id", S}]),
                        #{<<"result">> := #{<<"tools">> := Ts}} = erlmcp_flow_test_json:decode(B),
                        hd([T || #{<<"name">> := <<"fancy">>} = T <- Ts])
                end,
        ?assertMatch(#{<<"title">> := _, <<"outputSchema">> := _, <<"icons">> := _}, Fancy(<<"2025-11-25">>)),
        F18 = Fancy(<<"2025-06-18">>),
        ?assertMatch(#{<<"title">> := _, <<"outputSchema">> := _}, F18),
        ?assertNot(is_map_key(<<"icons">>, F18)),
        F03 = Fancy(<<"2025-03-26">>),
        ?assertEqual([], [K || K <- [<<"title">>, <<"outputSchema">>, <<"icons">>], is_map_key(K, F03)]),
        %% and a result: no structuredContent under 2025-03-26
        S03 = session(<<"2025-03-26">>),
        {200, _, B03} = post(msg(9, <<"tools/call">>, #{name => <<"flow_stats">>, arguments => #{}}),
                             [{"mcp-session-id", S03}]),
        #{<<"result">> := R03} = erlmcp_flow_test_json:decode(B03),
        ?assertNot(is_map_key(<<"structuredContent">>, R03)),
        %% the header's version applies to its request
        {200, _, B18} = post(msg(10, <<"tools/call">>, #{name => <<"flow_stats">>, arguments => #{}}),
                             [{"mcp-session-id", S03}, {"mcp-protocol-version", "2025-06-18"}]),
        ?assertMatch(#{<<"result">> := #{<<"structuredContent">> := _}}, erlmcp_flow_test_json:decode(B18))
    after
        erlmcp_flow:unregister_agent(<<"fancy">>)
    end.

relay_edges() ->
    Agent = spawn(fun erlmcp_flow_test_util:relaying_agent/0),
    ok = erlmcp_flow:register_agent(<<"relayer">>, Agent, [<<"tool:relay">>]),
    try
        {200, H, _} = post(msg(1, <<"initialize">>, #{protocolVersion => <<"2025-11-25">>,
                                                       capabilities => #{sampling => #{}}})),
        Sid = proplists:get_value("mcp-session-id", H),
        %% a client that accepts JSON only: nothing streamed, not asked
        {ok, {{_, 200, _}, H1, B1}} =
            httpc:request(post, {url(), [{"accept", "application/json"}, {"mcp-session-id", Sid}],
                                 "application/json",
                                 msg(2, <<"tools/call">>, #{name => <<"relay">>, arguments => #{}})},
                          [], [{body_format, binary}]),
        ?assertEqual("application/json", proplists:get_value("content-type", H1)),
        ?assertMatch(#{<<"id">> := 2, <<"result">> := #{<<"content">> := [#{<<"text">> := <<"refused: -32601">>}]}},
                     erlmcp_flow_test_json:decode(B1)),
        %% the server gives its request up: the client is told on the stream
        {200, _, B2} = post(msg(3, <<"tools/call">>, #{name => <<"relay">>, arguments => #{cancel => true}}),
                            [{"mcp-session-id", Sid}]),
        {_, Datas} = events(B2),
        Msgs = [erlmcp_flow_test_json:decode(D) || D <- Datas],
        [#{<<"id">> := Ask}] = [M || #{<<"method">> := <<"sampling/createMessage">>} = M <- Msgs],
        ?assertMatch([#{<<"params">> := #{<<"requestId">> := Ask}}],
                     [M || #{<<"method">> := <<"notifications/cancelled">>} = M <- Msgs]),
        ?assertMatch(#{<<"id">> := 3}, lists:last(Msgs)),
        %% a client's answer to a request nobody waits for: 202, nothing
        {ok, Late} = erlmcp_flow_jsonrpc:encode({response, Ask, {ok, #{}}}),
        ?assertMatch({202, _, _}, post(Late, [{"mcp-session-id", Sid}])),
        %% what a client is asked: roots when it declared them, ping always,
        %% elicitation not under 2025-03-26, nothing MCP does not name
        {200, H3, _} = post(msg(1, <<"initialize">>, #{protocolVersion => <<"2025-03-26">>,
                                                        capabilities => #{roots => #{}, elicitation => #{}}})),
        Sid3 = proplists:get_value("mcp-session-id", H3),
        Ask3 = fun(Id, Method) ->
                       {200, _, B} = post(msg(Id, <<"tools/call">>, #{name => <<"relay">>,
                                                                     arguments => #{ask => Method, cancel => true}}),
                                          [{"mcp-session-id", Sid3}]),
                       {_, Ds} = events(B),
                       [M || D <- Ds, #{<<"method">> := M} <- [erlmcp_flow_test_json:decode(D)],
                             M =/= <<"notifications/message">>]
               end,
        ?assertEqual([<<"roots/list">>, <<"notifications/cancelled">>], Ask3(4, <<"roots/list">>)),
        ?assertEqual([<<"ping">>, <<"notifications/cancelled">>], Ask3(5, <<"ping">>)),
        ?assertEqual([], Ask3(6, <<"elicitation/create">>)),
        ?assertEqual([], Ask3(7, <<"tools/list">>)),
        Port = erlmcp_flow_transport:port(http),
        %% an HTTP/1.0 client: the stream unframed, then the connection closes
        {ok, S10} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}]),
        Call10 = msg(9, <<"tools/call">>, #{name => <<"relay">>, arguments => #{cancel => true}}),
        ok = gen_tcp:send(S10, ["POST /mcp HTTP/1.0\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                                "accept: application/json, text/event-stream\r\nmcp-session-id: ", Sid,
                                "\r\ncontent-length: ", integer_to_list(byte_size(Call10)), "\r\n\r\n", Call10]),
        {ok, All10} = recv_all(S10, <<>>),
        ?assertEqual(nomatch, binary:match(All10, <<"transfer-encoding">>)),
        ?assertNotEqual(nomatch, binary:match(All10, <<"connection: close">>)),
        {_, Datas10} = events(All10),
        ?assertMatch(#{<<"id">> := 9, <<"result">> := _}, erlmcp_flow_test_json:decode(lists:last(Datas10))),
        %% a streaming call the client cancels: the stream ends with no answer
        {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}]),
        Call = msg(8, <<"tools/call">>, #{name => <<"relay">>, arguments => #{}}),
        ok = gen_tcp:send(S, ["POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                              "accept: application/json, text/event-stream\r\nmcp-session-id: ", Sid,
                              "\r\ncontent-length: ", integer_to_list(byte_size(Call)), "\r\n\r\n", Call]),
        {_, _} = stream_until(S, <<"sampling/createMessage">>, <<>>),
        ?assertMatch({202, _, _}, post(note(<<"notifications/cancelled">>, #{requestId => 8}),
                                       [{"mcp-session-id", Sid}])),
        {_, Events} = stream_until(S, <<"0\r\n\r\n">>, <<>>),
        ?assertEqual([], [E || E <- Events, binary:match(E, <<"\"result\"">>) =/= nomatch]),
        gen_tcp:close(S)
    after
        erlmcp_flow:unregister_agent(<<"relayer">>),
        exit(Agent, kill)
    end.

%% The words a host sees for each way a call fails.
readable_test() ->
    R = fun erlmcp_flow_mcp_server:readable/1,
    ?assertEqual(<<"2 attempts failed; the last, on b: the server did not answer in time">>,
                 R({no_available_agent, [#{agent_id => <<"a">>, reason => {agent_down, x}},
                                         #{agent_id => <<"b">>, reason => execution_timeout}]})),
    ?assertEqual(<<"bad a b">>, R({rejected, {tool_error, #{<<"content">> => [#{<<"type">> => <<"text">>, <<"text">> => <<"bad">>},
                                                                               #{<<"type">> => <<"image">>},
                                                                               #{<<"type">> => <<"text">>, <<"text">> => <<"a b">>}]}}})),
    ?assertEqual(<<>>, R({agent_error, {tool_error, #{<<"content">> => nope}}})),
    ?assertEqual(<<"m">>, R({agent_error, {mcp_error, -1, <<"m">>}})),
    ?assertEqual(<<"r">>, R({rpc_error, -1, <<"r">>})),
    ?assertEqual(<<"the server went away during the call">>, R({server_down, x})),
    ?assertEqual(<<"the server s is restarting: try again shortly">>, R({agent_error, {server_restarting, <<"s">>}})),
    ?assertEqual(<<"the server is not ready yet">>, R({server_not_ready, starting})),
    ?assertEqual(<<"no server offers this tool now">>, R(no_agents_available)),
    ?assertEqual(<<"every server of this tool is busy">>, R(overloaded)),
    ?assertEqual(<<"the router is not running">>, R(not_started)),
    ?assertEqual(<<"the server's answer was not MCP">>, R({bad_agent_reply, x})),
    ?assertEqual(<<"the server's answer was not MCP">>, R({bad_mcp_reply, x})),
    ?assertEqual(<<"internal error">>, R({internal_error, x})),
    ?assertEqual(<<"as is">>, R(<<"as is">>)),
    ?assertEqual(<<"draining">>, R(draining)),
    ?assertEqual(<<"the call failed">>, R({some, 1, term})).
