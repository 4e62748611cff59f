%% Span export as OTLP/JSON: to a file (rotated), POSTed to a collector on a
%% real loopback socket, and failing without touching routing.
-module(erlmcp_flow_span_exporter_tests).

-include_lib("eunit/include/eunit.hrl").

-import(erlmcp_flow_test_util, [echo_agent/0, with_env/2]).

-define(CALLER, <<"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01">>).
%% the exporter's own timer never fires during a test: flush/0 drives it
-define(QUIET, #{interval_ms => 3600000}).

file_test() ->
    Path = tmp_path("spans.jsonl"),
    with_env([{export, ?QUIET#{file => Path, batch_size => 16}}],
             fun() ->
                     ok = erlmcp_flow:register_agent(<<"a">>, echo_agent(), [<<"x">>]),
                     Metas = [begin
                                  {ok, _, M} = erlmcp_flow:execute(
                                                 #{type => t, id => I},
                                                 #{traceparent => ?CALLER}),
                                  M
                              end || I <- lists:seq(1, 50)],
                     ?assertEqual(100, erlmcp_flow_span_exporter:flush()),
                     ?assertEqual(0, erlmcp_flow_span_exporter:flush()),
                     Spans = spans_in([Path]),
                     ?assertEqual(100, length(Spans)),
                     %% every task: its span under the caller's, its attempt under it
                     lists:foreach(
                       fun(#{span_id := TaskSpan}) ->
                               [Task] = [S || #{<<"spanId">> := Id} = S <- Spans, Id =:= TaskSpan],
                               ?assertMatch(#{<<"traceId">> := <<"4bf92f3577b34da6a3ce929d0e0e4736">>,
                                              <<"parentSpanId">> := <<"00f067aa0ba902b7">>,
                                              <<"name">> := <<"erlmcp_flow.task">>,
                                              <<"status">> := #{<<"code">> := 1}}, Task),
                               [Attempt] = [S || #{<<"parentSpanId">> := P} = S <- Spans,
                                                 P =:= TaskSpan],
                               ?assertMatch(#{<<"name">> := <<"erlmcp_flow.attempt">>,
                                              <<"kind">> := 3}, Attempt),
                               Start = binary_to_integer(maps:get(<<"startTimeUnixNano">>, Attempt)),
                               End = binary_to_integer(maps:get(<<"endTimeUnixNano">>, Attempt)),
                               Now = os:system_time(nanosecond),
                               ?assert(Start =< End andalso End =< Now
                                       andalso Now - Start < 60000000000)
                       end, Metas),
                     ?assertMatch(#{spans_exported := 100, export_failures := 0,
                                    export_dropped := 0}, erlmcp_flow:stats())
             end).

rotation_test() ->
    Path = tmp_path("rotated.jsonl"),
    with_env([{export, ?QUIET#{file => Path, batch_size => 4, max_file_bytes => 8192,
                               max_files => 3}}],
             fun() ->
                     ok = erlmcp_flow:register_agent(<<"a">>, echo_agent(), [<<"x">>]),
                     [begin
                          {ok, _, _} = erlmcp_flow:execute(#{id => I}, #{}),
                          %% one batch of 4 spans (two tasks) a line
                          I rem 2 =:= 0 andalso erlmcp_flow_span_exporter:flush()
                      end || I <- lists:seq(1, 200)],
                     Files = [Path, Path ++ ".1", Path ++ ".2"],
                     [?assert(filelib:is_regular(F)) || F <- Files],
                     ?assertNot(filelib:is_regular(Path ++ ".3")),
                     [?assert(filelib:file_size(F) =< 8192) || F <- Files],
                     %% the oldest went, the newest stayed, each whole
                     Ids = [Id || #{<<"attributes">> := As} <- spans_in(Files),
                                  #{<<"key">> := <<"erlmcp_flow.task">>,
                                    <<"value">> := #{<<"stringValue">> := Id}} <- As],
                     ?assert(lists:member(<<"200">>, Ids)),
                     ?assertNot(lists:member(<<"1">>, Ids)),
                     ?assertEqual(400, maps:get(spans_exported, erlmcp_flow:stats()))
             end).

collector_test() ->
    {ok, Listen} = gen_tcp:listen(0, [binary, {packet, http_bin}, {active, false},
                                      {ip, {127, 0, 0, 1}}, {reuseaddr, true}]),
    {ok, Port} = inet:port(Listen),
    Self = self(),
    Collector = spawn_link(fun() -> accept(Listen, Self) end),
    Url = "http://127.0.0.1:" ++ integer_to_list(Port) ++ "/v1/traces",
    try
        with_env([{export, ?QUIET#{url => Url, batch_size => 8,
                                   service_name => <<"checkout">>}}],
                 fun() ->
                         ok = erlmcp_flow:register_agent(<<"a">>, echo_agent(), [<<"x">>]),
                         [{ok, _, _} = erlmcp_flow:execute(#{}, #{}) || _ <- lists:seq(1, 10)],
                         ?assertEqual(20, erlmcp_flow_span_exporter:flush()),
                         Posts = collected(),
                         ?assertEqual(3, length(Posts)),
                         [?assertMatch({'POST', <<"/v1/traces">>, <<"application/json">>, _}, P)
                          || P <- Posts],
                         Docs = [erlmcp_flow_test_json:decode(B) || {_, _, _, B} <- Posts],
                         [?assertMatch(#{<<"resourceSpans">> := [#{<<"resource">> := #{
                             <<"attributes">> := [#{<<"key">> := <<"service.name">>,
                                                    <<"value">> := #{<<"stringValue">> :=
                                                                         <<"checkout">>}}]}}]},
                                       D) || D <- Docs],
                         ?assertEqual(20, length(lists:append([spans(D) || D <- Docs]))),
                         ?assertMatch(#{spans_exported := 20, export_failures := 0},
                                      erlmcp_flow:stats())
                 end)
    after
        unlink(Collector),
        exit(Collector, kill),
        gen_tcp:close(Listen)
    end.

failing_collector_test() ->
    %% a port nobody listens on
    Port = erlmcp_flow_test_util:closed_port(),
    Url = "http://127.0.0.1:" ++ integer_to_list(Port) ++ "/v1/traces",
    with_env([{export, ?QUIET#{url => Url, batch_size => 8, http_timeout_ms => 500}}],
             fun() ->
                     ok = erlmcp_flow:register_agent(<<"a">>, echo_agent(), [<<"x">>]),
                     [{ok, _, _} = erlmcp_flow:execute(#{}, #{}) || _ <- lists:seq(1, 10)],
                     %% a round stops at the first batch every sink refused; the
                     %% rest waits for the next round
                     ?assertEqual([8, 8, 4, 0],
                                  [erlmcp_flow_span_exporter:flush() || _ <- lists:seq(1, 4)]),
                     [{ok, _, _} = erlmcp_flow:execute(#{}, #{}) || _ <- lists:seq(1, 10)],
                     ?assertMatch(#{spans_exported := 0, export_failures := 3, spans_lost := 20,
                                    completed := 20}, erlmcp_flow:stats())
             end).

%% A file that cannot be created (its directory would be under a regular
%% file): the node starts, routing works, the failures are counted.
unwritable_file_test() ->
    Blocker = tmp_path("not_a_dir"),
    ok = file:write_file(Blocker, <<>>),
    Path = filename:join([Blocker, "sub", "spans.jsonl"]),
    with_env([{export, ?QUIET#{file => Path}}],
             fun() ->
                     ?assert(is_pid(whereis(erlmcp_flow_span_exporter))),
                     ok = erlmcp_flow:register_agent(<<"a">>, echo_agent(), [<<"x">>]),
                     [{ok, _, _} = erlmcp_flow:execute(#{}, #{}) || _ <- lists:seq(1, 5)],
                     ?assertEqual(10, erlmcp_flow_span_exporter:flush()),
                     ?assertMatch(#{spans_exported := 0, export_failures := 1, spans_lost := 10},
                                  erlmcp_flow:stats()),
                     ?assertNot(filelib:is_file(Path))
             end).

%% Sinks that fail and then work again: a file whose directory appears, a
%% collector that answers 500 and then 200. Each is retried at the next
%% round and exports again; the exporter's own timer drives the rounds.
recovering_sinks_test() ->
    Blocker = tmp_path("blocked"),
    ok = file:write_file(Blocker, <<>>),
    Path = filename:join([Blocker, "spans.jsonl"]),
    Calls = counters:new(1, []),
    Collector = fun(_Export, _Headers) ->
                        counters:add(Calls, 1, 1),
                        case counters:get(Calls, 1) of
                            1 -> {500, [], "text/plain", <<"collector is starting">>};
                            _ -> {json, #{}}
                        end
                end,
    {Server, Port} = erlmcp_flow_scripted_http:start(Collector),
    Url = "http://127.0.0.1:" ++ integer_to_list(Port) ++ "/v1/traces",
    with_env([{export, #{file => Path, url => Url, interval_ms => 3600000, batch_size => 100}}],
             fun() ->
                     ok = erlmcp_flow:register_agent(<<"a">>, echo_agent(), [<<"x">>]),
                     [{ok, _, _} = erlmcp_flow:execute(#{}, #{}) || _ <- lists:seq(1, 3)],
                     ?assertEqual(6, erlmcp_flow_span_exporter:flush()),
                     ?assertMatch(#{spans_exported := 0, export_failures := 2}, erlmcp_flow:stats()),
                     %% both come back
                     ok = file:delete(Blocker),
                     [{ok, _, _} = erlmcp_flow:execute(#{}, #{}) || _ <- lists:seq(1, 3)],
                     ?assertEqual(6, erlmcp_flow_span_exporter:flush()),
                     ?assertMatch(#{spans_exported := 6, export_failures := 2}, erlmcp_flow:stats()),
                     ?assertEqual(6, length(spans_in([Path]))),
                     ?assertEqual(2, counters:get(Calls, 1))
             end),
    erlmcp_flow_scripted_http:stop(Server),
    %% the timer: spans leave without flush/0
    Timed = tmp_path("timed.jsonl"),
    with_env([{export, #{file => Timed, interval_ms => 20}}],
             fun() ->
                     ok = erlmcp_flow:register_agent(<<"a">>, echo_agent(), [<<"x">>]),
                     [{ok, _, _} = erlmcp_flow:execute(#{}, #{}) || _ <- lists:seq(1, 3)],
                     erlmcp_flow_test_util:wait_until(fun() -> length(spans_in([Timed])) =:= 6 end)
             end).

full_queue_test() ->
    Path = tmp_path("small_queue.jsonl"),
    with_env([{export, ?QUIET#{file => Path, queue_size => 10}}],
             fun() ->
                     ok = erlmcp_flow:register_agent(<<"a">>, echo_agent(), [<<"x">>]),
                     [{ok, _, _} = erlmcp_flow:execute(#{}, #{}) || _ <- lists:seq(1, 100)],
                     ?assertMatch(#{export_dropped := 190, completed := 100}, erlmcp_flow:stats()),
                     ?assertEqual(10, erlmcp_flow_span_exporter:flush())
             end).

no_export_by_default_test() ->
    with_env([],
             fun() ->
                     ?assertEqual(undefined, whereis(erlmcp_flow_span_exporter)),
                     ok = erlmcp_flow:register_agent(<<"a">>, echo_agent(), [<<"x">>]),
                     [{ok, _, _} = erlmcp_flow:execute(#{}, #{}) || _ <- lists:seq(1, 10)],
                     %% nothing queued for an exporter that does not exist
                     ?assertMatch(#{export_dropped := 0}, erlmcp_flow:stats()),
                     ?assertEqual({ok, 0, <<>>},
                                  erlmcp_flow_nif:export_batch(erlmcp_flow_registry:router(),
                                                               100, <<"s">>))
             end).

%%--------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------

tmp_path(Name) ->
    Dir = filename:join(["/tmp", "erlmcp_flow_export_" ++ os:getpid(),
                         integer_to_list(erlang:unique_integer([positive]))]),
    ok = filelib:ensure_path(Dir),
    filename:join(Dir, Name).

%% The spans of every export request in these JSON-lines files.
spans_in(Files) ->
    lists:append([spans(erlmcp_flow_test_json:decode(Line))
                  || F <- Files, {ok, Bin} <- [file:read_file(F)],
                     Line <- binary:split(Bin, <<"\n">>, [global, trim_all])]).

spans(#{<<"resourceSpans">> := [#{<<"scopeSpans">> := [#{<<"spans">> := Spans}]}]}) ->
    Spans.

%% A minimal HTTP/1.1 collector: every request's method, path, content type
%% and body go to the test process; the answer is 200 with no body.
accept(Listen, Owner) ->
    {ok, S} = gen_tcp:accept(Listen),
    Pid = spawn(fun() -> receive go -> serve(S, Owner, #{}) end end),
    ok = gen_tcp:controlling_process(S, Pid),
    Pid ! go,
    accept(Listen, Owner).

serve(S, Owner, Req) ->
    case gen_tcp:recv(S, 0) of
        {ok, {http_request, Method, {abs_path, Path}, _}} ->
            serve(S, Owner, Req#{method => Method, path => Path});
        {ok, {http_header, _, 'Content-Length', _, Len}} ->
            serve(S, Owner, Req#{length => binary_to_integer(Len)});
        {ok, {http_header, _, 'Content-Type', _, Type}} ->
            serve(S, Owner, Req#{type => Type});
        {ok, {http_header, _, _, _, _}} ->
            serve(S, Owner, Req);
        {ok, http_eoh} ->
            ok = inet:setopts(S, [{packet, raw}]),
            {ok, Body} = gen_tcp:recv(S, maps:get(length, Req)),
            Owner ! {collected, {maps:get(method, Req), maps:get(path, Req),
                                 maps:get(type, Req), Body}},
            ok = gen_tcp:send(S, <<"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n">>),
            ok = inet:setopts(S, [{packet, http_bin}]),
            serve(S, Owner, #{});
        {error, closed} ->
            ok
    end.

collected() ->
    receive {collected, P} -> [P | collected()] after 0 -> [] end.
