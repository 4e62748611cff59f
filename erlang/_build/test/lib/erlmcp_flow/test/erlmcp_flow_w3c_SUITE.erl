%% W3C Trace Context over real HTTP: the test service of the W3C validation
%% harness (erlmcp_flow_w3c_service, on the public API) receives every
%% request of the harness, as the shared vectors hold them, and its agent
%% calls back a listener of this suite; the callbacks must carry the context
%% a receiver passes on. Then the harness itself, where it is present:
%%
%%     make w3c TRACE_CONTEXT_TEST=/path/to/w3c/trace-context/test PYTHON=python3
%%
%% (a Python with aiohttp). The harness is not ours to ship; without it that
%% case is skipped with the reason.
-module(erlmcp_flow_w3c_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-include_lib("inets/include/httpd.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1]).
-export([harness_requests_over_http/1, one_span_per_callback/1, w3c_harness/1]).
%% the callback listener (an inets httpd module)
-export([do/1]).

-define(LISTENER, erlmcp_flow_w3c_suite_listener).

all() ->
    [harness_requests_over_http, one_span_per_callback, w3c_harness].

init_per_suite(Config) ->
    logger:set_primary_config(level, critical),
    {ok, Service} = erlmcp_flow_w3c_service:start(0),
    Root = filename:join(os:getenv("TMPDIR", "/tmp"), "erlmcp_flow_w3c_callbacks"),
    ok = filelib:ensure_path(Root),
    {ok, Callbacks} = inets:start(httpd, [{port, 0}, {server_name, "callbacks"},
                                          {server_root, Root}, {document_root, Root},
                                          {bind_address, {127, 0, 0, 1}}, {modules, [?MODULE]}]),
    [{service, Service}, {callbacks, Callbacks} | Config].

end_per_suite(Config) ->
    ok = inets:stop(httpd, ?config(callbacks, Config)),
    ok = erlmcp_flow_w3c_service:stop(?config(service, Config)),
    _ = application:stop(erlmcp_flow),
    ok.

%% @private A callback: its header fields go to the waiting test.
do(#mod{request_uri = Path, parsed_header = Headers}) ->
    case whereis(?LISTENER) of
        undefined -> ok;
        Pid -> Pid ! {callback, list_to_binary(Path), lists:reverse(Headers)}
    end,
    {proceed, [{response, {200, "ok"}}]}.

url(Config, Name) ->
    Port = proplists:get_value(port, httpd:info(?config(Name, Config), [port])),
    "http://127.0.0.1:" ++ integer_to_list(Port).

%% Sends the harness's request (its header fields) to the service, asking
%% for callbacks to `Paths'; returns each callback's header fields.
request(Config, Fields, Paths) ->
    true = register(?LISTENER, self()),
    try
        Calls = [#{<<"url">> => list_to_binary(url(Config, callbacks) ++ P), <<"arguments">> => []}
                 || P <- Paths],
        Body = iolist_to_binary(erlmcp_flow_test_json:encode(Calls)),
        Headers = [{binary_to_list(N), binary_to_list(V)} || [N, V] <- Fields],
        {ok, {{_, 200, _}, _, _}} =
            httpc:request(post, {url(Config, service) ++ "/test", Headers, "application/json", Body},
                          [{timeout, 10000}], []),
        [begin
             Want = list_to_binary(P),
             receive {callback, Want, H} -> H
             after 5000 -> ct:fail({no_callback, P})
             end
         end || P <- Paths]
    after
        unregister(?LISTENER)
    end.

field(Name, Headers) ->
    [list_to_binary(V) || {N, V} <- Headers, string:lowercase(N) =:= Name].

%% Every request of the harness in the vectors: the callback's traceparent
%% continues the trace passed on (a new span id) or starts a new one, and
%% its tracestate is the one passed on, or none.
harness_requests_over_http(Config) ->
    Cases = erlmcp_flow_test_json:vectors("traceparent.json", <<"incoming">>)
        ++ erlmcp_flow_test_json:vectors("tracestate.json", <<"incoming">>),
    lists:foreach(
      fun(#{<<"case">> := Case, <<"fields">> := Fields, <<"traceparent">> := TP,
            <<"tracestate">> := TS}) ->
              [Headers] = request(Config, Fields, ["/cb"]),
              ct:log("~s: ~p", [Case, Headers]),
              [Out] = field("traceparent", Headers),
              {ok, #{trace_id := T, span_id := S, trace_flags := F}} =
                  erlmcp_flow_correlation_tracker:parse_traceparent(Out),
              case TP of
                  null ->
                      %% a new trace: none of the ids sent
                      Sent = [binary:part(V, 3, 32) || [N, V] <- Fields, byte_size(V) >= 35,
                                                       string:lowercase(N) =:= <<"traceparent">>],
                      ?assertNot(lists:member(T, Sent), Case),
                      ?assertEqual(3, F, Case);
                  _ ->
                      {ok, #{trace_id := T0, span_id := S0, trace_flags := F0}} =
                          erlmcp_flow_correlation_tracker:parse_traceparent(TP),
                      ?assertEqual({Case, T0}, {Case, T}),
                      ?assertNotEqual({Case, S0}, {Case, S}),
                      ?assertEqual({Case, F0 band 3}, {Case, F})
              end,
              Expected = [TS || TS =/= null],
              ?assertEqual({Case, Expected}, {Case, field("tracestate", Headers)})
      end, Cases).

%% Three callbacks of one task: three child spans, so three parent ids, all
%% in the trace's chain under the task's attempt.
one_span_per_callback(Config) ->
    TP = <<"00-12345678901234567890123456789012-1234567890123456-01">>,
    Outs = request(Config, [[<<"traceparent">>, TP]], ["/0", "/1", "/2"]),
    Parsed = [begin
                  [H] = field("traceparent", Headers),
                  {ok, P} = erlmcp_flow_correlation_tracker:parse_traceparent(H),
                  P
              end || Headers <- Outs],
    T = <<"12345678901234567890123456789012">>,
    ?assertEqual([T], lists:usort([Tr || #{trace_id := Tr} <- Parsed])),
    Ids = [S || #{span_id := S} <- Parsed],
    ?assertEqual(3, length(lists:usort(Ids))),
    {ok, Chain} = erlmcp_flow_correlation_tracker:get_trace_chain(T),
    Children = [S || #{kind := child, span_id := S} <- Chain],
    ?assertEqual([], Ids -- Children).

%% The W3C harness itself, where it is present.
w3c_harness(Config) ->
    Python = os:getenv("PYTHON", "python3"),
    case os:getenv("TRACE_CONTEXT_TEST") of
        false ->
            {skip, "TRACE_CONTEXT_TEST is not set: run make w3c TRACE_CONTEXT_TEST=<the test/ "
                   "folder of w3c/trace-context> PYTHON=<a python with aiohttp>"};
        Dir ->
            case os:cmd(Python ++ " -c 'import aiohttp; print(\"yes\")' 2>&1") of
                "yes\n" ->
                    Endpoint = url(Config, service) ++ "/test",
                    Cmd = lists:flatten(
                            io_lib:format("cd '~s' && SPEC_LEVEL=2 STRICT_LEVEL=2 ~s test.py ~s "
                                          "2>&1; echo \"exit $?\"", [Dir, Python, Endpoint])),
                    Out = os:cmd(Cmd),
                    ct:log("~s", [Out]),
                    ?assertMatch({match, _}, re:run(Out, "\nOK\n")),
                    ?assertMatch({match, _}, re:run(Out, "exit 0\n$"));
                Other ->
                    {skip, "no aiohttp in " ++ Python ++ ": " ++ Other}
            end
    end.
