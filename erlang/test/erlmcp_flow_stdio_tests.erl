-module(erlmcp_flow_stdio_tests).

-include_lib("eunit/include/eunit.hrl").

%% bin/erlmcp-flow stdio, run as a host runs it: requests on its standard
%% input, one response a line on its standard output, logs elsewhere, exit 0
%% at the end of input once every request is answered.
stdio_test_() ->
    {timeout, 60, fun stdio/0}.

stdio() ->
    Root = root(),
    Dir = filename:join(Root, "_build/test/stdio"),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    Config = filename:join(Dir, "small.config"),
    ok = file:write_file(Config, <<"[{erlmcp_flow, [{transports, #{max_message_bytes => 200}}]}].\n">>),
    Input = filename:join(Dir, "input"),
    Big = binary:copy(<<"x">>, 300),
    ok = file:write_file(Input, [<<"{\"jsonrpc\":\"2.0\",\"method\":\"flow.stats\",\"id\":1}\n">>,
                                 <<"{\"jsonrpc\":\"2.0\",\"method\":\"flow.nope\",\"id\":\"b\"}\n">>,
                                 <<"{\"jsonrpc\":\"2.0\",\"method\":\"flow.stats\"}\n">>,
                                 <<"\n">>,
                                 <<"not json\n">>,
                                 Big, <<"\n">>,
                                 <<"{\"jsonrpc\":\"2.0\",\"method\":\"flow.route_task\",\"params\":",
                                   "{\"requirements\":{\"capabilities\":[\"none\"]}},\"id\":2}\n">>]),
    Cmd = lists:flatten(io_lib:format("~s stdio --config ~s < ~s 2>/dev/null; echo \"exit=$?\"",
                                      [filename:join(Root, "bin/erlmcp-flow"),
                                       filename:rootname(Config), Input])),
    Out = os:cmd(Cmd),
    Lines = string:split(string:trim(Out), "\n", all),
    {Json, ["exit=0"]} = lists:split(length(Lines) - 1, Lines),
    Answers = [erlmcp_flow_test_json:decode(list_to_binary(L)) || L <- Json],
    ById = maps:from_list([{maps:get(<<"id">>, A), A} || A <- Answers]),
    ?assertEqual(5, length(Answers)),
    ?assertMatch(#{<<"result">> := #{<<"agents">> := 0}}, maps:get(1, ById)),
    ?assertMatch(#{<<"error">> := #{<<"code">> := -32601}}, maps:get(<<"b">>, ById)),
    ?assertMatch(#{<<"error">> := #{<<"code">> := -32001}}, maps:get(2, ById)),
    Null = [A || A <- Answers, maps:get(<<"id">>, A) =:= null],
    ?assertEqual([-32700, -32012],
                 lists:sort([C || #{<<"error">> := #{<<"code">> := C}} <- Null])).

root() ->
    erlmcp_flow_test_util:repo_root("bin/erlmcp-flow").

%% The same loops run in this VM (erlmcp_flow_stdio:serve/2 and
%% erlmcp_flow_mcp_stdio:serve/2 over a `{sink, Pid}' in place of the
%% standard streams), so that the lines a host sends, the answers and the
%% end of input are checked where cover sees them.
in_vm_test_() ->
    {setup,
     fun() ->
             Apps = erlmcp_flow_test_util:start(),
             ok = erlmcp_flow:register_agent(<<"sleeper">>, spawn(fun sleeper/0), [<<"tool:sleep">>]),
             Apps
     end,
     fun(Apps) ->
             erlmcp_flow_test_util:unregister_all(),
             erlmcp_flow_test_util:stop(Apps)
     end,
     [{"JSON-RPC: answers, notifications, errors, long lines, end of input", fun jsonrpc_in_vm/0},
      {"MCP: lifecycle, tools, cancellation, list_changed, end of input", {timeout, 30, fun mcp_in_vm/0}},
      {"MCP 2025-03-26: batches answered, later fields trimmed", {timeout, 30, fun mcp_2025_03_26_in_vm/0}},
      {"MCP: what a server sends during a call reaches the host, its answers go back",
       {timeout, 30, fun mcp_relay_in_vm/0}}]}.

%% A loop under test: `Mod:serve({sink, self()}, Max)' in a process of its
%% own; lines go to it as a port would send them.
start_loop(Mod, Max) ->
    Test = self(),
    Io = {sink, Test},
    Pid = spawn_link(fun() -> Test ! {exit_status, Mod:serve(Io, Max)} end),
    {Pid, Io}.

line({Pid, Io}, Line) ->
    Pid ! {Io, {data, {eol, Line}}}.

stdout() ->
    receive {stdout, B} -> erlmcp_flow_test_json:decode(B) after 5000 -> error(no_output) end.

no_stdout(Ms) ->
    receive {stdout, B} -> error({unexpected, B}) after Ms -> ok end.

eof({Pid, Io}) ->
    Pid ! {Io, eof},
    receive {exit_status, S} -> S after 10000 -> error(no_exit) end.

jsonrpc_in_vm() ->
    L = start_loop(erlmcp_flow_stdio, 200),
    line(L, <<"{\"jsonrpc\":\"2.0\",\"method\":\"flow.stats\",\"id\":1}">>),
    ?assertMatch(#{<<"id">> := 1, <<"result">> := #{}}, stdout()),
    line(L, <<"{\"jsonrpc\":\"2.0\",\"method\":\"flow.stats\"}">>),
    line(L, <<>>),
    no_stdout(100),
    line(L, <<"not json">>),
    ?assertMatch(#{<<"error">> := #{<<"code">> := -32700}}, stdout()),
    %% a line in pieces, then past the limit
    {Pid, Io} = L,
    Pid ! {Io, {data, {noeol, binary:copy(<<"x">>, 150)}}},
    line(L, binary:copy(<<"x">>, 150)),
    ?assertMatch(#{<<"error">> := #{<<"code">> := -32012, <<"data">> := #{<<"maxSize">> := 200}}},
                 stdout()),
    line(L, <<"{\"jsonrpc\":\"2.0\",\"method\":\"flow.route_task\",\"params\":{\"requirements\":"
              "{\"capabilities\":[\"none\"]}},\"id\":2}">>),
    ?assertEqual(0, eof(L)),
    %% what was in flight was answered before the end
    ?assertMatch(#{<<"id">> := 2, <<"error">> := #{<<"code">> := -32001}}, stdout()).

mcp_in_vm() ->
    L = start_loop(erlmcp_flow_mcp_stdio, 100000),
    Req = fun(Id, M, P) -> {ok, B} = erlmcp_flow_jsonrpc:encode({request, Id, M, P}), line(L, B) end,
    Note = fun(M, P) -> {ok, B} = erlmcp_flow_jsonrpc:encode({notification, M, P}), line(L, B) end,
    Req(1, <<"tools/list">>, #{}),
    ?assertMatch(#{<<"id">> := 1, <<"error">> := #{<<"code">> := -32600}}, stdout()),
    Req(2, <<"ping">>, #{}),
    ?assertMatch(#{<<"id">> := 2, <<"result">> := #{}}, stdout()),
    Req(3, <<"initialize">>, #{protocolVersion => <<"2025-06-18">>}),
    ?assertMatch(#{<<"result">> := #{<<"protocolVersion">> := <<"2025-06-18">>}}, stdout()),
    Note(<<"notifications/initialized">>, #{}),
    Req(4, <<"tools/list">>, #{}),
    #{<<"result">> := #{<<"tools">> := Tools}} = stdout(),
    ?assert(lists:member(<<"sleep">>, [N || #{<<"name">> := N} <- Tools])),
    Req(5, <<"tools/call">>, #{name => <<"nope">>}),
    ?assertMatch(#{<<"id">> := 5, <<"error">> := #{<<"code">> := -32602}}, stdout()),
    %% a call that sleeps, cancelled: never answered
    Req(6, <<"tools/call">>, #{name => <<"sleep">>, arguments => #{}}),
    timer:sleep(200),
    Note(<<"notifications/cancelled">>, #{requestId => 6}),
    no_stdout(300),
    %% a new tool: the host is told
    ok = erlmcp_flow:register_agent(<<"adder">>, spawn(fun sleeper/0), [<<"tool:add">>]),
    ?assertMatch(#{<<"method">> := <<"notifications/tools/list_changed">>},
                 receive {stdout, B} -> erlmcp_flow_test_json:decode(B) after 3000 -> error(no_note) end),
    %% garbage and a batch
    line(L, <<"{oops">>),
    ?assertMatch(#{<<"error">> := #{<<"code">> := -32700}}, stdout()),
    line(L, <<"[{\"jsonrpc\":\"2.0\",\"method\":\"ping\",\"id\":7},{\"jsonrpc\":\"2.0\",\"result\":1,\"id\":9}]">>),
    %% (batches are gone from MCP 2025-06-18 on)
    ?assertMatch(#{<<"id">> := null, <<"error">> := #{<<"code">> := -32600}}, stdout()),
    %% an empty line, a cancellation of nothing, a stray message: nothing said
    line(L, <<>>),
    Note(<<"notifications/cancelled">>, #{requestId => 999}),
    {Pid, Io} = L,
    Pid ! stray,
    no_stdout(100),
    %% a line in pieces past the limit: -32012
    Pid ! {Io, {data, {noeol, binary:copy(<<" ">>, 60000)}}},
    line(L, binary:copy(<<" ">>, 60000)),
    ?assertMatch(#{<<"error">> := #{<<"code">> := -32012, <<"data">> := #{<<"maxSize">> := 100000}}},
                 stdout()),
    %% a request past the limit: answered with its id (read from the
    %% line's start), the rest of the line dropped as it came
    Pid ! {Io, {data, {noeol, <<"{\"jsonrpc\":\"2.0\",\"id\":77,\"method\":\"tools/call\","
                                "\"params\":{\"name\":\"add\",\"arguments\":{\"x\":\"">>}}},
    [Pid ! {Io, {data, {noeol, binary:copy(<<"a">>, 50000)}}} || _ <- lists:seq(1, 10)],
    line(L, <<"\"}}}">>),
    ?assertMatch(#{<<"id">> := 77, <<"error">> := #{<<"code">> := -32012,
                                                    <<"data">> := #{<<"size">> := Size}}}
                   when Size > 500000, stdout()),
    ?assertEqual(0, eof(L)),
    ok = erlmcp_flow:unregister_agent(<<"adder">>).

%% An MCP session under 2025-03-26 over stdio: batches answered; a result
%% of a later version's shape is trimmed (no structuredContent).
mcp_2025_03_26_in_vm() ->
    L = start_loop(erlmcp_flow_mcp_stdio, 100000),
    {ok, B} = erlmcp_flow_jsonrpc:encode({request, 1, <<"initialize">>, #{protocolVersion => <<"2025-03-26">>}}),
    line(L, B),
    ?assertMatch(#{<<"result">> := #{<<"protocolVersion">> := <<"2025-03-26">>}}, stdout()),
    line(L, <<"[{\"jsonrpc\":\"2.0\",\"method\":\"ping\",\"id\":7}]">>),
    ?assertMatch([#{<<"id">> := 7, <<"result">> := #{}}], stdout()),
    {ok, C} = erlmcp_flow_jsonrpc:encode({request, 8, <<"tools/call">>,
                                          #{name => <<"flow_stats">>, arguments => #{}}}),
    line(L, C),
    #{<<"id">> := 8, <<"result">> := R} = stdout(),
    ?assertNot(is_map_key(<<"structuredContent">>, R)),
    ?assertEqual(0, eof(L)).

sleeper() ->
    receive
        {execute_task, _, _, _From, Ref} -> receive {cancel_task, Ref} -> ok end
    end,
    sleeper().

%% Relaying over stdio, an Erlang agent standing in for the server behind
%% (erlmcp_flow_test_util:relaying_agent/0): progress with the host's token,
%% log messages at the host's level, a sampling request under an id of the
%% session's and the host's answer back; a request the server gives up is
%% cancelled at the host; a host that did not declare sampling is not asked.
mcp_relay_in_vm() ->
    Agent = spawn(fun erlmcp_flow_test_util:relaying_agent/0),
    ok = erlmcp_flow:register_agent(<<"relayer">>, Agent, [<<"tool:relay">>]),
    try
        L = start_loop(erlmcp_flow_mcp_stdio, 100000),
        Send = fun(Msg) -> {ok, B} = erlmcp_flow_jsonrpc:encode(Msg), line(L, B) end,
        Send({request, 1, <<"initialize">>, #{protocolVersion => <<"2025-11-25">>,
                                              capabilities => #{sampling => #{}}}}),
        ?assertMatch(#{<<"id">> := 1, <<"result">> := _}, stdout()),
        Send({request, 2, <<"logging/setLevel">>, #{level => <<"loud">>}}),
        ?assertMatch(#{<<"id">> := 2, <<"error">> := #{<<"code">> := -32602}}, stdout()),
        Send({request, 3, <<"logging/setLevel">>, #{level => <<"warning">>}}),
        ?assertMatch(#{<<"id">> := 3, <<"result">> := #{}}, stdout()),
        Send({request, 4, <<"tools/call">>, #{name => <<"relay">>, arguments => #{},
                                              '_meta' => #{progressToken => 77}}}),
        ?assertMatch(#{<<"method">> := <<"notifications/progress">>,
                       <<"params">> := #{<<"progressToken">> := 77}}, stdout()),
        ?assertMatch(#{<<"method">> := <<"notifications/message">>,
                       <<"params">> := #{<<"level">> := <<"warning">>}}, stdout()),
        #{<<"id">> := Ask, <<"method">> := <<"sampling/createMessage">>} = stdout(),
        Send({response, Ask, {ok, #{role => assistant, model => <<"m">>,
                                    content => #{type => text, text => <<"from the host">>}}}}),
        ?assertMatch(#{<<"id">> := 4, <<"result">> := #{<<"content">> := [#{<<"text">> := <<"sampled: from the host">>}]}},
                     stdout()),
        %% the server gives its request up: the host is told
        Send({request, 5, <<"tools/call">>, #{name => <<"relay">>, arguments => #{cancel => true}}}),
        ?assertMatch(#{<<"method">> := <<"notifications/message">>}, stdout()),
        #{<<"id">> := Ask2, <<"method">> := <<"sampling/createMessage">>} = stdout(),
        ?assertMatch(#{<<"method">> := <<"notifications/cancelled">>,
                       <<"params">> := #{<<"requestId">> := Ask2, <<"reason">> := <<"gave up">>}}, stdout()),
        ?assertMatch(#{<<"id">> := 5}, stdout()),
        %% an answer to nothing is passed by
        Send({response, <<"erlmcp_flow:0">>, {ok, #{}}}),
        no_stdout(100),
        ?assertEqual(0, eof(L)),
        %% a host that declared no sampling: the server is refused
        L2 = start_loop(erlmcp_flow_mcp_stdio, 100000),
        Send2 = fun(Msg) -> {ok, B} = erlmcp_flow_jsonrpc:encode(Msg), line(L2, B) end,
        line(L2, <<"[{\"jsonrpc\":\"2.0\",\"method\":\"ping\",\"id\":7}]">>),
        ?assertMatch(#{<<"id">> := null, <<"error">> := #{<<"code">> := -32600}}, stdout()),
        Send2({request, 1, <<"initialize">>, #{protocolVersion => <<"2025-11-25">>}}),
        _ = stdout(),
        Send2({request, 2, <<"tools/call">>, #{name => <<"relay">>, arguments => #{}}}),
        ?assertMatch(#{<<"method">> := <<"notifications/message">>, <<"params">> := #{<<"level">> := <<"debug">>}},
                     stdout()),
        ?assertMatch(#{<<"method">> := <<"notifications/message">>}, stdout()),
        ?assertMatch(#{<<"id">> := 2, <<"result">> := #{<<"content">> := [#{<<"text">> := <<"refused: -32601">>}]}},
                     stdout()),
        ?assertEqual(0, eof(L2)),
        %% a 2025-03-26 batch: every kind of item
        L3 = start_loop(erlmcp_flow_mcp_stdio, 100000),
        {ok, I3} = erlmcp_flow_jsonrpc:encode({request, 1, <<"initialize">>, #{protocolVersion => <<"2025-03-26">>}}),
        line(L3, I3),
        _ = stdout(),
        line(L3, <<"[{\"jsonrpc\":\"2.0\",\"method\":\"initialize\",\"id\":2},"
                   "{\"jsonrpc\":\"2.0\",\"method\":\"tools/list\",\"id\":3},"
                   "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"},"
                   "{\"jsonrpc\":\"2.0\",\"id\":4}]">>),
        ?assertMatch([#{<<"id">> := 2, <<"error">> := #{<<"code">> := -32600}},
                      #{<<"id">> := 3, <<"result">> := #{<<"tools">> := _}},
                      #{<<"id">> := 4, <<"error">> := #{<<"code">> := -32600}}], stdout()),
        line(L3, <<"[{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}]">>),
        no_stdout(100),
        line(L3, <<"[{\"jsonrpc\":\"2.0\",\"method\":\"tools/call\",\"id\":5,\"params\":{\"name\":\"nope\"}}]">>),
        ?assertMatch([#{<<"id">> := 5, <<"error">> := #{<<"code">> := -32602}}], stdout()),
        ?assertEqual(0, eof(L3)),
        %% what a host is asked: what it declared, ping always, nothing else
        L4 = start_loop(erlmcp_flow_mcp_stdio, 100000),
        Send4 = fun(Msg) -> {ok, B} = erlmcp_flow_jsonrpc:encode(Msg), line(L4, B) end,
        Send4({request, 1, <<"initialize">>, #{protocolVersion => <<"2025-11-25">>,
                                               capabilities => #{roots => #{}, elicitation => #{}}}}),
        _ = stdout(),
        Asked = fun(Id, Method) ->
                        Send4({request, Id, <<"tools/call">>, #{name => <<"relay">>,
                                                                arguments => #{ask => Method, cancel => true}}}),
                        Until = fun U(Acc) ->
                                        case stdout() of
                                            #{<<"id">> := Id, <<"result">> := _} -> lists:reverse(Acc);
                                            #{<<"method">> := <<"notifications/message">>} -> U(Acc);
                                            #{<<"method">> := M} -> U([M | Acc])
                                        end
                                end,
                        Until([])
                end,
        ?assertEqual([<<"roots/list">>, <<"notifications/cancelled">>], Asked(2, <<"roots/list">>)),
        ?assertEqual([<<"elicitation/create">>, <<"notifications/cancelled">>], Asked(3, <<"elicitation/create">>)),
        ?assertEqual([<<"ping">>, <<"notifications/cancelled">>], Asked(4, <<"ping">>)),
        ?assertEqual([], Asked(5, <<"tools/list">>)),
        ?assertEqual(0, eof(L4))
    after
        erlmcp_flow:unregister_agent(<<"relayer">>),
        exit(Agent, kill)
    end.
