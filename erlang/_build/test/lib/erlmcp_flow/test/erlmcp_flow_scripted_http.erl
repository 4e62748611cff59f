%% A scripted HTTP server for tests: a real listener on loopback that
%% answers each POSTed JSON body as the test's script says (JSON, an event
%% stream, any status), and reports every body it receives, with its
%% headers, to the test process. The tests play with it the MCP servers
%% (Streamable HTTP) and OTLP collectors that misbehave, which the packaged
%% ones never do.
-module(erlmcp_flow_scripted_http).

-export([start/1, url/1, stop/1]).

%% Script(Msg, Headers) -> {Status, [{Header, Value}], ContentType, Body}
%% | {json, Term} | {sse, [Term]} | accepted.
-type script() :: fun((term(), [{binary(), binary()}]) -> term()).

-spec start(script()) -> {pid(), inet:port_number()}.
start(Script) ->
    Owner = self(),
    Ref = make_ref(),
    Pid = spawn(fun() ->
                        {ok, L} = gen_tcp:listen(0, [binary, {ip, {127, 0, 0, 1}}, {active, false},
                                                     {reuseaddr, true}, {packet, http_bin}]),
                        {ok, Port} = inet:port(L),
                        Owner ! {Ref, Port},
                        accept(L, Owner, Script)
                end),
    receive {Ref, Port} -> {Pid, Port} end.

-spec url(inet:port_number()) -> string().
url(Port) ->
    "http://127.0.0.1:" ++ integer_to_list(Port) ++ "/mcp".

-spec stop(pid()) -> ok.
stop(Pid) ->
    exit(Pid, kill),
    ok.

accept(L, Owner, Script) ->
    {ok, S} = gen_tcp:accept(L),
    Conn = spawn(fun() -> receive go -> request(S, Owner, Script) end end),
    link(Conn),
    ok = gen_tcp:controlling_process(S, Conn),
    Conn ! go,
    accept(L, Owner, Script).

request(S, Owner, Script) ->
    case gen_tcp:recv(S, 0, 30000) of
        {ok, {http_request, _Method, _Path, _}} ->
            headers(S, Owner, Script, []);
        _ ->
            gen_tcp:close(S)
    end.

headers(S, Owner, Script, Acc) ->
    case gen_tcp:recv(S, 0, 30000) of
        {ok, {http_header, _, Name, _, Value}} ->
            headers(S, Owner, Script, [{string:lowercase(to_bin(Name)), Value} | Acc]);
        {ok, http_eoh} ->
            Len = binary_to_integer(proplists:get_value(<<"content-length">>, Acc, <<"0">>)),
            ok = inet:setopts(S, [{packet, raw}]),
            {ok, Body} = case Len of
                             0 -> {ok, <<>>};
                             _ -> gen_tcp:recv(S, Len, 30000)
                         end,
            Msg = erlmcp_flow_test_json:decode(Body),
            Owner ! {scripted_http_got, self(), Msg, Acc},
            reply(S, Script(Msg, Acc)),
            ok = inet:setopts(S, [{packet, http_bin}]),
            request(S, Owner, Script);
        _ ->
            gen_tcp:close(S)
    end.

reply(S, accepted) ->
    reply(S, {202, [], "application/json", <<>>});
reply(S, {json, Term}) ->
    reply(S, {200, [], "application/json", encode(Term)});
reply(S, {sse, Terms}) ->
    reply(S, {200, [], "text/event-stream",
              [[<<"event: message\r\ndata: ">>, encode(T), <<"\r\n\r\n">>] || T <- Terms]});
reply(S, {Status, Headers, Type, Body}) ->
    Bin = iolist_to_binary(Body),
    ok = gen_tcp:send(S, [<<"HTTP/1.1 ">>, integer_to_binary(Status), <<" X\r\n">>,
                          <<"content-type: ">>, Type, <<"\r\ncontent-length: ">>,
                          integer_to_binary(byte_size(Bin)), <<"\r\n">>,
                          [[K, <<": ">>, V, <<"\r\n">>] || {K, V} <- Headers],
                          <<"\r\n">>, Bin]).

encode(Term) ->
    iolist_to_binary(erlmcp_flow_test_json:encode(Term)).

to_bin(A) when is_atom(A) -> atom_to_binary(A);
to_bin(B) when is_binary(B) -> B;
to_bin(L) when is_list(L) -> list_to_binary(L).
