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
