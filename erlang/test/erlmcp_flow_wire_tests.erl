%% What a hostile or careless client sends must not take the node down or
%% over (issue 26): floods of pipelined requests, clients that never read,
%% connections that never authenticate or drip, half-closed connections,
%% agents taken over, cross-origin pages, slow agents holding HTTP, rates.
%% Real sockets against a node with its transports on loopback.
-module(erlmcp_flow_wire_tests).

-include_lib("eunit/include/eunit.hrl").

-import(erlmcp_flow_test_util, [echo_agent/0, raw_agent/1, with_env/2]).

-define(TOKEN, <<"0123456789abcdef0123">>).

%%--------------------------------------------------------------------
%% TCP
%%--------------------------------------------------------------------

tcp(Settings, Fun) ->
    tcp(Settings, [], Fun).

tcp(Settings, More, Fun) ->
    with_env([{transports, maps:merge(#{tcp => maps:merge(#{enabled => true, port => 0}, Settings)},
                                      maps:from_list(More))}],
             fun() ->
                     ok = erlmcp_flow:register_agent(<<"echo-1">>, echo_agent(), [<<"echo">>]),
                     Fun()
             end).

connect() ->
    connect([]).

connect(Opts) ->
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, erlmcp_flow_transport:port(tcp),
                              [binary, {packet, line}, {active, false}, {recbuf, 1 bsl 20} | Opts]),
    S.

request(Id, Method, Params) ->
    {ok, Bin} = erlmcp_flow_jsonrpc:encode({request, Id, Method, Params}),
    [Bin, $\n].

route(Id) ->
    route(Id, <<"echo">>).

route(Id, Cap) ->
    request(Id, <<"flow.route_task">>, #{task => #{n => Id},
                                         requirements => #{capabilities => [Cap]}}).

recv_json(S) ->
    recv_json(S, 10000).

recv_json(S, Timeout) ->
    {ok, Line} = gen_tcp:recv(S, 0, Timeout),
    erlmcp_flow_test_json:decode(Line).

in_flight() ->
    erlmcp_flow_listener_server:in_flight(erlmcp_flow_rpc_tcp).

%% Four connections write 5 000 requests each in one write: every request
%% is answered once (a result or -32002, never -32603), what the node serves
%% at once never passes the connections' bounds, and a fifth client is
%% served meanwhile.
flood_test_() ->
    {timeout, 120, fun flood/0}.

flood() ->
    tcp(#{max_in_flight => 16, rate_limit => infinity}, [{max_in_flight, 40}],
        fun() ->
                N = 5000,
                Floods = [connect() || _ <- lists:seq(1, 4)],
                [ok = gen_tcp:send(S, [route(I) || I <- lists:seq(1, N)]) || S <- Floods],
                %% sampled while they are served: never past 4 x 16, nor the node's 40
                Self = self(),
                Sampler = spawn_link(fun() -> sample(Self, 0) end),
                Other = connect(),
                [begin
                     ok = gen_tcp:send(Other, route(I)),
                     ?assertMatch(#{<<"id">> := I}, recv_json(Other))
                 end || I <- lists:seq(1, 20)],
                Answers = [[recv_json(S) || _ <- lists:seq(1, N)] || S <- Floods],
                Sampler ! {stop, Self},
                Peak = receive {peak, P} -> P end,
                Codes = lists:usort([maps:get(<<"code">>, E, ok) || A <- Answers, #{<<"error">> := E} <- A]),
                ?assertEqual([], Codes -- [-32002]),
                [?assertEqual(lists:seq(1, N), lists:sort([maps:get(<<"id">>, X) || X <- A])) || A <- Answers],
                ?assert(Peak =< 40),
                ?assertEqual(#{messages => 0, bytes => 0}, in_flight()),
                [gen_tcp:close(S) || S <- [Other | Floods]]
        end).

sample(Parent, Peak) ->
    receive
        {stop, Parent} -> Parent ! {peak, Peak}
    after 1 ->
        #{messages := M} = in_flight(),
        sample(Parent, max(M, Peak))
    end.

%% The node's bound: with 10 messages served at once at most and agents that
%% hold their tasks, the eleventh is answered -32002 at once.
node_bound_test() ->
    tcp(#{}, [{max_in_flight, 10}],
        fun() ->
                Hold = raw_agent(fun(_) -> noreply end),
                ok = erlmcp_flow:register_agent(<<"hold">>, Hold, [<<"hold">>]),
                S = connect(),
                ok = gen_tcp:send(S, [request(I, <<"flow.route_task">>,
                                              #{task => #{}, requirements => #{capabilities => [<<"hold">>],
                                                                                  timeout => 60000,
                                                                                  idempotent => false}})
                                      || I <- lists:seq(1, 11)]),
                #{<<"id">> := 11, <<"error">> := #{<<"code">> := -32002,
                                                    <<"data">> := #{<<"reason">> := <<"node_in_flight">>}}} =
                    recv_json(S),
                gen_tcp:close(S),
                exit(Hold, kill)
        end).

%% A client that writes and never reads is cut off once a write has been
%% blocked for 5 s; another client is served all along.
deaf_client_test_() ->
    {timeout, 120, fun deaf_client/0}.

deaf_client() ->
    tcp(#{rate_limit => infinity},
        fun() ->
                Deaf = [begin
                            {ok, D} = gen_tcp:connect({127, 0, 0, 1}, erlmcp_flow_transport:port(tcp),
                                                      [binary, {active, false}, {recbuf, 4096}]),
                            ok = gen_tcp:send(D, [route(I) || I <- lists:seq(1, 20000)]),
                            D
                        end || _ <- lists:seq(1, 3)],
                Other = connect(),
                ok = gen_tcp:send(Other, route(1)),
                ?assertMatch(#{<<"id">> := 1}, recv_json(Other)),
                %% the deaf ones are gone (5 s after their writes blocked)
                erlmcp_flow_test_util:await(
                  fun() -> erlmcp_flow_listener:connections(erlmcp_flow_rpc_tcp) =:= 1 end, 30000),
                [gen_tcp:close(D) || D <- Deaf],
                %% nothing of theirs held: their requests' processes gave it back
                erlmcp_flow_test_util:await(fun() -> in_flight() =:= #{messages => 0, bytes => 0} end, 30000),
                ok = gen_tcp:send(Other, route(2)),
                ?assertMatch(#{<<"id">> := 2}, recv_json(Other)),
                gen_tcp:close(Other)
        end).

%% 2 000 connections that never authenticate do not lock out a client with
%% the token; a connection that drips a byte at a time is closed at its
%% authentication deadline.
unauthenticated_test_() ->
    {timeout, 120, fun unauthenticated/0}.

unauthenticated() ->
    tcp(#{token => ?TOKEN, max_connections => 4, max_unauthenticated => 8, auth_timeout_ms => 500},
        fun() ->
                Squatters = [connect() || _ <- lists:seq(1, 200)],
                Client = connect(),
                ok = gen_tcp:send(Client, request(1, <<"flow.authenticate">>, #{token => ?TOKEN})),
                ?assertMatch(#{<<"result">> := #{<<"authenticated">> := true}}, recv_json(Client)),
                ok = gen_tcp:send(Client, route(2)),
                ?assertMatch(#{<<"id">> := 2, <<"result">> := _}, recv_json(Client)),
                %% a byte every 100 ms: closed at the 500 ms deadline, not kept alive by them
                Drip = connect(),
                T0 = erlang:monotonic_time(millisecond),
                Bytes = binary_to_list(iolist_to_binary(request(1, <<"flow.authenticate">>,
                                                                #{token => ?TOKEN}))),
                Sent = drip(Drip, Bytes, 0),
                ?assert(Sent < length(Bytes)),
                ?assert(erlang:monotonic_time(millisecond) - T0 < 5000),
                [gen_tcp:close(S) || S <- [Client, Drip | Squatters]]
        end).

drip(_S, [], N) ->
    N;
drip(S, [B | Rest], N) ->
    case gen_tcp:send(S, [B]) of
        ok ->
            case gen_tcp:recv(S, 0, 100) of
                {error, timeout} -> drip(S, Rest, N + 1);
                _ -> N
            end;
        {error, _} ->
            N
    end.

%% A line that drips in after authentication is cut at request_timeout_ms.
slow_line_test() ->
    tcp(#{request_timeout_ms => 300},
        fun() ->
                S = connect(),
                Bytes = binary_to_list(iolist_to_binary(route(1))),
                Sent = drip(S, Bytes, 0),
                ?assert(Sent < length(Bytes)),
                gen_tcp:close(S)
        end).

%% A client that sends its request and shuts down its sending side gets the
%% answer (20 of 20), its last line may end without a newline.
half_close_test() ->
    tcp(#{},
        fun() ->
                [begin
                     S = connect(),
                     ok = gen_tcp:send(S, case I rem 2 of
                                              0 -> route(I);
                                              1 -> iolist_to_binary(string:trim(route(I), trailing, "\n"))
                                          end),
                     ok = gen_tcp:shutdown(S, write),
                     ?assertMatch(#{<<"id">> := I, <<"result">> := _}, recv_json(S)),
                     ?assertEqual({error, closed}, gen_tcp:recv(S, 0, 5000)),
                     gen_tcp:close(S)
                 end || I <- lists:seq(1, 20)]
        end).

%% Only the connection that registered an agent unregisters it; HTTP and
%% other connections get -32013, and a local agent's id cannot be taken.
ownership_test() ->
    tcp(#{max_agents => 3},
        fun() ->
                A = connect(),
                B = connect(),
                Reg = fun(S, Id) ->
                              ok = gen_tcp:send(S, request(1, <<"flow.register_agent">>,
                                                           #{agent_id => Id, capabilities => [<<"x">>]})),
                              recv_json(S)
                      end,
                Unreg = fun(S, Id) ->
                                ok = gen_tcp:send(S, request(2, <<"flow.unregister_agent">>, #{agent_id => Id})),
                                recv_json(S)
                        end,
                ?assertMatch(#{<<"result">> := _}, Reg(A, <<"a1">>)),
                ?assertMatch(#{<<"error">> := #{<<"code">> := -32013}}, Unreg(B, <<"a1">>)),
                ?assertMatch(#{<<"error">> := #{<<"code">> := -32013}}, Unreg(B, <<"echo-1">>)),
                ?assertMatch(#{<<"error">> := #{<<"code">> := -32013}}, Unreg(A, <<"echo-1">>)),
                ?assertMatch({ok, _}, erlmcp_flow:find_agent(<<"echo-1">>)),
                ?assertMatch(#{<<"result">> := #{<<"unregistered">> := true}}, Unreg(A, <<"a1">>)),
                %% the local agent's id stays the node's, even once it is gone
                ok = erlmcp_flow:unregister_agent(<<"echo-1">>),
                ?assertMatch(#{<<"error">> := #{<<"code">> := -32013}}, Reg(B, <<"echo-1">>)),
                %% at most 3 agents over one connection (a1's place came back)
                [?assertMatch(#{<<"result">> := _}, Reg(A, Id)) || Id <- [<<"a1">>, <<"a2">>, <<"a3">>]],
                ?assertMatch(#{<<"error">> := #{<<"code">> := -32602,
                                                <<"data">> := #{<<"reason">> := <<"{too_many_agents,3}">>}}},
                             Reg(A, <<"a4">>)),
                [gen_tcp:close(S) || S <- [A, B]]
        end).

%% Past the client's rate: -32002 with reason rate_limit.
tcp_rate_test() ->
    tcp(#{rate_limit => 5},
        fun() ->
                S = connect(),
                ok = gen_tcp:send(S, [route(I) || I <- lists:seq(1, 20)]),
                Answers = [recv_json(S) || _ <- lists:seq(1, 20)],
                Limited = [A || #{<<"error">> := #{<<"code">> := -32002,
                                                   <<"data">> := #{<<"reason">> := <<"rate_limit">>}}} = A <- Answers],
                ?assert(length(Limited) >= 10),
                gen_tcp:close(S)
        end).

%%--------------------------------------------------------------------
%% HTTP
%%--------------------------------------------------------------------

http(Settings, Fun) ->
    with_env([{transports, #{http => maps:merge(#{enabled => true, port => 0}, Settings)}}],
             fun() ->
                     ok = erlmcp_flow:register_agent(<<"echo-1">>, echo_agent(), [<<"echo">>]),
                     Fun()
             end).

%% One HTTP/1.1 request on a connection of its own: {Status, Body}.
http_request(Method, Path, Headers, Body) ->
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, erlmcp_flow_transport:port(http), [binary, {active, false}]),
    ok = gen_tcp:send(S, [Method, " ", Path, " HTTP/1.1\r\nHost: 127.0.0.1\r\n",
                          [[N, ": ", V, "\r\n"] || {N, V} <- Headers],
                          "Content-Length: ", integer_to_binary(iolist_size(Body)), "\r\n\r\n", Body]),
    Reply = recv_response(S, <<>>),
    gen_tcp:close(S),
    Reply.

recv_response(S, Acc) ->
    case gen_tcp:recv(S, 0, 30000) of
        {ok, Data} ->
            All = <<Acc/binary, Data/binary>>,
            case binary:split(All, <<"\r\n\r\n">>) of
                [Head, Body] ->
                    {match, [L]} = re:run(Head, <<"content-length: (\\d+)">>, [{capture, all_but_first, binary}]),
                    case byte_size(Body) >= binary_to_integer(L) of
                        true ->
                            <<"HTTP/1.1 ", Code:3/binary, _/binary>> = Head,
                            {binary_to_integer(Code), Body};
                        false ->
                            recv_response(S, All)
                    end;
                _ ->
                    recv_response(S, All)
            end;
        {error, closed} ->
            {closed, Acc}
    end.

rpc_body(Id, Method, Params) ->
    {ok, Bin} = erlmcp_flow_jsonrpc:encode({request, Id, Method, Params}),
    Bin.

%% Agents that never answer, and more route_tasks than the listener lets
%% wait: the extra ones are answered -32002 at once, and /health and /mcp
%% keep answering while the others wait.
slow_agents_test_() ->
    {timeout, 60, fun slow_agents/0}.

slow_agents() ->
    http(#{max_waiting => 5, max_waiting_per_client => 5, max_connections => 64},
         fun() ->
                 Holders = [begin
                                H = raw_agent(fun(_) -> noreply end),
                                ok = erlmcp_flow:register_agent(<<"slow-", (integer_to_binary(I))/binary>>, H,
                                                                [<<"slow">>]),
                                H
                            end || I <- lists:seq(1, 10)],
                 Self = self(),
                 Body = rpc_body(1, <<"flow.route_task">>,
                                 #{task => #{}, requirements => #{capabilities => [<<"slow">>], timeout => 20000,
                                                                  idempotent => false}}),
                 Waiters = [spawn_link(fun() -> Self ! {waited, self(), http_request("POST", "/rpc", [], Body)} end)
                            || _ <- lists:seq(1, 20)],
                 %% 15 of them come back at once, overloaded
                 Refused = [receive {waited, _, R} -> R after 10000 -> error(not_refused) end
                            || _ <- lists:seq(1, 15)],
                 [?assertMatch({200, _}, R) || R <- Refused],
                 [?assertMatch(#{<<"error">> := #{<<"code">> := -32002}}, erlmcp_flow_test_json:decode(B))
                  || {200, B} <- Refused],
                 %% the other endpoints answer meanwhile
                 ?assertMatch({200, _}, http_request("GET", "/health", [], <<>>)),
                 {ok, Init} = erlmcp_flow_jsonrpc:encode(
                                {request, 1, <<"initialize">>,
                                 #{protocolVersion => <<"2025-06-18">>, capabilities => #{},
                                   clientInfo => #{name => <<"t">>, version => <<"1">>}}}),
                 ?assertMatch({200, _}, http_request("POST", "/mcp", [{"content-type", "application/json"},
                                                                      {"accept", "application/json, text/event-stream"}],
                                                     Init)),
                 [exit(H, kill) || H <- Holders],
                 [receive {waited, W, _} -> ok after 20000 -> error({still_waiting, W}) end
                  || W <- Waiters, is_process_alive(W)],
                 ok
         end).

%% A page of another site cannot call /rpc (no more than /mcp); a listed
%% origin can; Bearer in any case.
origin_and_bearer_test() ->
    http(#{token => ?TOKEN, allowed_origins => [<<"https://console.example">>]},
         fun() ->
                 Body = rpc_body(1, <<"flow.unregister_agent">>, #{agent_id => <<"echo-1">>}),
                 Auth = {"authorization", <<"Bearer ", ?TOKEN/binary>>},
                 ?assertMatch({403, _}, http_request("POST", "/rpc", [Auth, {"origin", "http://evil.example"},
                                                                      {"content-type", "text/plain"}], Body)),
                 ?assertMatch({ok, _}, erlmcp_flow:find_agent(<<"echo-1">>)),
                 ?assertMatch({403, _}, http_request("POST", "/mcp", [Auth, {"origin", "http://evil.example"}],
                                                     <<"{}">>)),
                 Stats = rpc_body(1, <<"flow.stats">>, #{}),
                 ?assertMatch({200, _}, http_request("POST", "/rpc", [Auth, {"origin", "https://console.example"}],
                                                     Stats)),
                 ?assertMatch({200, _}, http_request("POST", "/rpc", [Auth, {"origin", "http://localhost:3000"}],
                                                     Stats)),
                 [?assertMatch({200, _}, http_request("POST", "/rpc", [{"authorization", <<S/binary, " ", ?TOKEN/binary>>}],
                                                      Stats))
                  || S <- [<<"bearer">>, <<"BEARER">>, <<"Bearer">>]],
                 ?assertMatch({401, _}, http_request("POST", "/rpc", [{"authorization", <<"Basic ", ?TOKEN/binary>>}],
                                                     Stats)),
                 %% and unregistering a local agent over HTTP is not for anyone
                 {200, R} = http_request("POST", "/rpc", [Auth], Body),
                 ?assertMatch(#{<<"error">> := #{<<"code">> := -32013}}, erlmcp_flow_test_json:decode(R))
         end).

%% Past the client's rate: 429 with -32002.
http_rate_test() ->
    http(#{rate_limit => 5},
         fun() ->
                 Stats = rpc_body(1, <<"flow.stats">>, #{}),
                 Results = [http_request("POST", "/rpc", [], Stats) || _ <- lists:seq(1, 20)],
                 Limited = [B || {429, B} <- Results],
                 ?assert(length(Limited) >= 10),
                 [?assertMatch(#{<<"error">> := #{<<"code">> := -32002}}, erlmcp_flow_test_json:decode(B))
                  || B <- Limited]
         end).

%% A client that keeps writing after its request was refused (a body past
%% the limit, then more and more): it reads the 413, and the connection is
%% closed once the grace for its unread bytes is over, whatever it sends;
%% the listener serves others meanwhile.
lingering_writer_test_() ->
    {timeout, 60, fun lingering_writer/0}.

lingering_writer() ->
    http(#{},
         fun() ->
                 {ok, S} = gen_tcp:connect({127, 0, 0, 1}, erlmcp_flow_transport:port(http),
                                           [binary, {active, false}]),
                 ok = gen_tcp:send(S, ["POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ",
                                       integer_to_list(1 bsl 30), "\r\n\r\n"]),
                 Self = self(),
                 Writer = spawn_link(fun() -> write_forever(S, Self) end),
                 {ok, <<"HTTP/1.1 413 ", _/binary>>} = gen_tcp:recv(S, 0, 10000),
                 Stats = rpc_body(1, <<"flow.stats">>, #{}),
                 ?assertMatch({200, _}, http_request("POST", "/rpc", [], Stats)),
                 %% the writer sees the connection end (closed or reset)
                 receive {write_ended, Writer, Why} -> ?assertNotEqual(timeout, Why) after 30000 -> error(never_closed) end,
                 gen_tcp:close(S)
         end).

write_forever(S, Parent) ->
    case gen_tcp:send(S, binary:copy(<<"x">>, 65536)) of
        ok -> timer:sleep(1), write_forever(S, Parent);
        {error, Why} -> Parent ! {write_ended, self(), Why}
    end.
