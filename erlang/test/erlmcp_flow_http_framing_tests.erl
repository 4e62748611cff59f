%% HTTP/1.1 message framing (RFC 9112) as a hostile client probes it, over
%% real sockets against a listener with the test handler (which echoes the
%% method, path and body): chunked bodies, smuggling through Content-Length
%% and Transfer-Encoding, bad lengths, pipelining, limits, 100-continue,
%% HEAD, half-close, slow requests. Each probe reads everything the listener
%% sends until it closes or goes quiet, so a second, smuggled answer would
%% show.
-module(erlmcp_flow_http_framing_tests).

-include_lib("eunit/include/eunit.hrl").

-define(LISTENER, framing_http).
-define(MAX_BODY, 1024).

framing_test_() ->
    {setup, fun start/0, fun stop/1,
     fun(Port) ->
             [{Name, fun() -> Probe(Port) end} || {Name, Probe} <- probes()]
     end}.

start() ->
    process_flag(trap_exit, true),
    {ok, Sup} = erlmcp_flow_http:start_link(
                  #{name => ?LISTENER, tag => ?LISTENER, ip => loopback, port => 0,
                    handler => erlmcp_flow_test_http_handler,
                    limits => #{max_connections => 16, request_timeout_ms => 400,
                                idle_timeout_ms => 2000, max_body_bytes => ?MAX_BODY}}),
    put(sup, Sup),
    erlmcp_flow_http:port(?LISTENER).

stop(_Port) ->
    [begin unlink(P), exit(P, shutdown) end || P <- [whereis(?LISTENER)], P =/= undefined],
    ok = wait_gone(?LISTENER).

wait_gone(Name) ->
    case erlmcp_flow_http:port(Name) of
        undefined -> ok;
        _ -> timer:sleep(5), wait_gone(Name)
    end.

probes() ->
    [{"a chunked body is read as its chunks", fun chunked/1},
     {"Content-Length with Transfer-Encoding: 400, nothing smuggled", fun cl_te/1},
     {"Transfer-Encoding with Content-Length after it: 400", fun te_cl/1},
     {"two different Content-Lengths: 400", fun two_lengths/1},
     {"the same Content-Length twice is one length", fun same_length_twice/1},
     {"lengths that are not digits: 400, not 413", fun bad_lengths/1},
     {"a length past the limit, and chunks adding up past it: 413", fun too_large/1},
     {"pipelined requests in one write: every one answered, in order", fun pipelined/1},
     {"a 9 KB header line: 431; a 10 KB target: 414; 70 fields: 431", fun long_lines/1},
     {"transfer codings other than chunked: 501; chunked not last or twice, or in HTTP/1.0: 400",
      fun codings/1},
     {"folded, badly named and bare-LF header lines, Host missing or twice: 400", fun bad_heads/1},
     {"HTTP/2.0 gets 505; HTTP/1.2 is spoken as 1.1", fun versions/1},
     {"Expect: 100-continue gets its 100 before the body; another expectation 417",
      fun expect_continue/1},
     {"chunk extensions and trailers are passed by; bad chunk framing 400", fun chunk_details/1},
     {"HEAD: the GET's head, no body", fun head/1},
     {"a client that shuts down its side after its request still gets the answer", fun half_close/1},
     {"a request that drips in is cut at its deadline, however slowly bytes keep coming",
      fun drip/1},
     {"leading empty lines are passed by; absolute-form targets are understood", fun leniency/1}].

%%--------------------------------------------------------------------
%% Probes
%%--------------------------------------------------------------------

chunked(Port) ->
    ?assertEqual([{200, <<"'POST' /c abcdefgh">>}],
                 exchange(Port, <<"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  "3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n">>)),
    %% its coding name in any case
    ?assertEqual([{200, <<"'POST' /c z">>}],
                 exchange(Port, <<"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ChUnKeD\r\n\r\n"
                                  "1\r\nz\r\n0\r\n\r\n">>)).

cl_te(Port) ->
    %% the classic: a front that reads Content-Length forwards 4 bytes,
    %% this server must not read the rest as a GET of its own
    ?assertMatch([{400, _}],
                 exchange(Port, <<"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                                  "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                                  "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n">>)).

te_cl(Port) ->
    ?assertMatch([{400, _}],
                 exchange(Port, <<"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                  "Content-Length: 40\r\n\r\n0\r\n\r\n">>)).

two_lengths(Port) ->
    ?assertMatch([{400, _}],
                 exchange(Port, <<"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                                  "Content-Length: 5\r\n\r\nabcde">>)),
    ?assertMatch([{400, _}],
                 exchange(Port, <<"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 5\r\n\r\nabcde">>)).

same_length_twice(Port) ->
    ?assertEqual([{200, <<"'POST' /a abc">>}],
                 exchange(Port, <<"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                                  "Content-Length: 3\r\n\r\nabc">>)),
    ?assertEqual([{200, <<"'POST' /a abc">>}],
                 exchange(Port, <<"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3,3\r\n\r\nabc">>)).

bad_lengths(Port) ->
    [?assertMatch([{400, _}],
                  exchange(Port, <<"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: ", L/binary,
                                   "\r\n\r\nabc">>))
     || L <- [<<"abc">>, <<"-5">>, <<"1e3">>, <<"+3">>, <<"3 3">>, <<"0x3">>, <<>>]].

too_large(Port) ->
    ?assertMatch([{413, _}],
                 exchange(Port, <<"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n">>)),
    ?assertMatch([{413, _}],
                 exchange(Port, <<"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: "
                                  "99999999999999999999999\r\n\r\n">>)),
    Chunk = binary:copy(<<"a">>, 600),
    ?assertMatch([{413, _}],
                 exchange(Port, <<"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  "258\r\n", Chunk/binary, "\r\n258\r\n", Chunk/binary, "\r\n0\r\n\r\n">>)).

pipelined(Port) ->
    Five = iolist_to_binary([["POST /p", integer_to_binary(I), " HTTP/1.1\r\nHost: x\r\n"
                              "Content-Length: 1\r\n\r\n", integer_to_binary(I)]
                             || I <- lists:seq(1, 5)]),
    ?assertEqual([{200, <<"'POST' /p", (integer_to_binary(I))/binary, " ",
                        (integer_to_binary(I))/binary>>} || I <- lists:seq(1, 5)],
                 exchange(Port, Five, 5)),
    %% a chunked request, then a plain one, in one write
    ?assertEqual([{200, <<"'POST' /c ab">>}, {200, <<"'GET' /g ">>}],
                 exchange(Port, <<"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  "2\r\nab\r\n0\r\n\r\nGET /g HTTP/1.1\r\nHost: x\r\n\r\n">>, 2)).

long_lines(Port) ->
    Long = binary:copy(<<"v">>, 9 * 1024),
    ?assertMatch([{431, _}], exchange(Port, <<"GET / HTTP/1.1\r\nHost: x\r\nX-Long: ", Long/binary,
                                              "\r\n\r\n">>)),
    Query = binary:copy(<<"q">>, 10 * 1024),
    ?assertMatch([{414, _}], exchange(Port, <<"GET /?", Query/binary, " HTTP/1.1\r\nHost: x\r\n\r\n">>)),
    Many = iolist_to_binary([["X-H", integer_to_binary(I), ": v\r\n"] || I <- lists:seq(1, 70)]),
    ?assertMatch([{431, _}], exchange(Port, <<"GET / HTTP/1.1\r\nHost: x\r\n", Many/binary, "\r\n">>)).

codings(Port) ->
    Te = fun(V, Version) ->
                 exchange(Port, <<"POST /a ", Version/binary, "\r\nHost: x\r\nTransfer-Encoding: ",
                                  V/binary, "\r\n\r\n0\r\n\r\n">>)
         end,
    ?assertMatch([{501, _}], Te(<<"gzip, chunked">>, <<"HTTP/1.1">>)),
    ?assertMatch([{400, _}], Te(<<"chunked, gzip">>, <<"HTTP/1.1">>)),
    ?assertMatch([{400, _}], Te(<<"gzip">>, <<"HTTP/1.1">>)),
    ?assertMatch([{400, _}], Te(<<"chunked, chunked">>, <<"HTTP/1.1">>)),
    ?assertMatch([{400, _}], Te(<<"chunked">>, <<"HTTP/1.0">>)),
    ?assertMatch([{400, _}], Te(<<>>, <<"HTTP/1.1">>)).

bad_heads(Port) ->
    [?assertMatch([{400, _}], exchange(Port, Bytes))
     || Bytes <- [<<"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  folded\r\n\r\n">>,
                  <<"GET / HTTP/1.1\r\nHost: x\r\nX-A : a\r\n\r\n">>,
                  <<"GET / HTTP/1.1\r\nHost: x\r\nX(A): a\r\n\r\n">>,
                  <<"GET / HTTP/1.1\nHost: x\n\n">>,
                  <<"GET / HTTP/1.1\r\nHost: x\nX-A: a\r\n\r\n">>,
                  <<"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n">>,
                  <<"GET / HTTP/1.1\r\nX-A: a\r\n\r\n">>,
                  <<"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n">>,
                  <<"GET  / HTTP/1.1\r\nHost: x\r\n\r\n">>,
                  <<"GET / HTTP/1.1 \r\nHost: x\r\n\r\n">>,
                  <<"G(T / HTTP/1.1\r\nHost: x\r\n\r\n">>,
                  <<"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n">>,
                  <<"GET / HTTP/1.1\r\nHost: x\r\nX-A: a", 0, "b\r\n\r\n">>]].

versions(Port) ->
    ?assertMatch([{505, _}], exchange(Port, <<"GET / HTTP/2.0\r\nHost: x\r\n\r\n">>)),
    ?assertEqual([{200, <<"'GET' /v ">>}], exchange(Port, <<"GET /v HTTP/1.2\r\nHost: x\r\n\r\n">>)),
    ?assertMatch([{400, _}], exchange(Port, <<"GET / HTTP/11\r\nHost: x\r\n\r\n">>)).

expect_continue(Port) ->
    {ok, S} = connect(Port),
    ok = gen_tcp:send(S, <<"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                           "Content-Length: 3\r\n\r\n">>),
    {ok, Continue} = gen_tcp:recv(S, 0, 2000),
    ?assertEqual(<<"HTTP/1.1 100 Continue\r\n\r\n">>, Continue),
    ok = gen_tcp:send(S, <<"abc">>),
    ?assertEqual([{200, <<"'POST' /e abc">>}], read_responses(S, <<>>, 1)),
    gen_tcp:close(S),
    ?assertMatch([{417, _}], exchange(Port, <<"POST /e HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n"
                                              "Content-Length: 3\r\n\r\nabc">>)).

chunk_details(Port) ->
    ?assertEqual([{200, <<"'POST' /c abc">>}],
                 exchange(Port, <<"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  "3;name=value\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n">>)),
    [?assertMatch([{400, _}], exchange(Port, <<"POST /c HTTP/1.1\r\nHost: x\r\n"
                                               "Transfer-Encoding: chunked\r\n\r\n", Body/binary>>))
     || Body <- [<<"zz\r\nabc\r\n0\r\n\r\n">>,
                 <<"3\r\nabcX\r\n0\r\n\r\n">>,
                 <<"\r\nabc\r\n0\r\n\r\n">>,
                 <<"-3\r\nabc\r\n0\r\n\r\n">>,
                 <<"3\r\nabc\r\n0\r\nBad Trailer\r\n\r\n">>]].

head(Port) ->
    {ok, S} = connect(Port),
    ok = gen_tcp:send(S, <<"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /h HTTP/1.1\r\nHost: x\r\n\r\n">>),
    timer:sleep(100),
    {ok, Bytes} = gen_tcp:recv(S, 0, 2000),
    gen_tcp:close(S),
    %% the HEAD's head says the length of the GET's body, and no body follows
    [Head1, Rest] = binary:split(Bytes, <<"\r\n\r\n">>),
    ?assertMatch({match, _}, re:run(Head1, <<"content-length: 9">>)),
    ?assertMatch(<<"HTTP/1.1 200 OK", _/binary>>, Rest),
    ?assertEqual([{200, <<"'GET' /h ">>}], parse_responses(Rest)).

half_close(Port) ->
    [begin
         {ok, S} = connect(Port),
         ok = gen_tcp:send(S, <<"POST /hc HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi">>),
         ok = gen_tcp:shutdown(S, write),
         ?assertEqual([{200, <<"'POST' /hc hi">>}], read_responses(S, <<>>, 1)),
         gen_tcp:close(S)
     end || _ <- lists:seq(1, 20)].

drip(Port) ->
    {ok, S} = connect(Port),
    Bytes = <<"GET /drip HTTP/1.1\r\nHost: x\r\n\r\n">>,
    %% one byte every 50 ms: 31 bytes take 1.5 s, the deadline is 400 ms
    T0 = erlang:monotonic_time(millisecond),
    Sent = drip(S, binary_to_list(Bytes), 0),
    Closed = erlang:monotonic_time(millisecond) - T0,
    ?assert(Sent < byte_size(Bytes)),
    ?assert(Closed < 1500),
    gen_tcp:close(S).

drip(_S, [], N) ->
    N;
drip(S, [B | Rest], N) ->
    case gen_tcp:send(S, [B]) of
        ok ->
            case gen_tcp:recv(S, 0, 50) of
                {error, timeout} -> drip(S, Rest, N + 1);
                {error, closed} -> N;
                {ok, _} -> N
            end;
        {error, _} ->
            N
    end.

leniency(Port) ->
    ?assertEqual([{200, <<"'GET' /l ">>}], exchange(Port, <<"\r\n\r\nGET /l HTTP/1.1\r\nHost: x\r\n\r\n">>)),
    ?assertEqual([{200, <<"'GET' /abs ">>}],
                 exchange(Port, <<"GET http://x:80/abs HTTP/1.1\r\nHost: x\r\n\r\n">>)).

%%--------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------

connect(Port) ->
    gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}]).

%% Every response to `Bytes', until the listener closes or is quiet for
%% 300 ms after `Expected' responses (1 by default).
exchange(Port, Bytes) ->
    exchange(Port, Bytes, 1).

exchange(Port, Bytes, Expected) ->
    {ok, S} = connect(Port),
    ok = gen_tcp:send(S, Bytes),
    Responses = read_responses(S, <<>>, Expected),
    gen_tcp:close(S),
    Responses.

read_responses(S, Acc, Expected) ->
    Timeout = case length(parse_responses(Acc)) >= Expected of
                  true -> 300;
                  false -> 3000
              end,
    case gen_tcp:recv(S, 0, Timeout) of
        {ok, Data} -> read_responses(S, <<Acc/binary, Data/binary>>, Expected);
        {error, _} -> parse_responses(Acc)
    end.

%% The responses in `Bytes': `{Status, Body}' each.
parse_responses(<<>>) ->
    [];
parse_responses(Bytes) ->
    case binary:split(Bytes, <<"\r\n\r\n">>) of
        [Head, Rest] ->
            [<<"HTTP/1.1 ", Code:3/binary, _/binary>> | _] = binary:split(Head, <<"\r\n">>),
            Length = case re:run(Head, <<"content-length: (\\d+)">>, [{capture, all_but_first, binary}]) of
                         {match, [L]} -> binary_to_integer(L);
                         nomatch -> 0
                     end,
            case Rest of
                <<Body:Length/binary, More/binary>> ->
                    [{binary_to_integer(Code), Body} | parse_responses(More)];
                _ ->
                    []
            end;
        [_] ->
            []
    end.
