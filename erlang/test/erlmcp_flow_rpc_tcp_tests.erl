-module(erlmcp_flow_rpc_tcp_tests).

-include_lib("eunit/include/eunit.hrl").

-import(erlmcp_flow_test_util, [echo_agent/0, with_env/2, wait_until/1]).

-define(TOKEN, <<"0123456789abcdef0123">>).

%% JSON-RPC over TCP on loopback, connection by connection: the token, the
%% connection limit, pipelining, clients that stall or never read, and the
%% idle timeout. (The Python suite covers agents in another language.)

tcp(Settings, Fun) ->
    with_env([{transports, #{tcp => maps:merge(#{enabled => true, port => 0}, Settings)}}],
             fun() ->
                     ok = erlmcp_flow:register_agent(<<"echo-1">>, echo_agent(), [<<"echo">>]),
                     Fun()
             end).

connect() ->
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, erlmcp_flow_transport:port(tcp),
                              [binary, {packet, line}, {active, false},
                               {recbuf, 1 bsl 20}]),
    S.

request(Id, Method, Params) ->
    {ok, Bin} = erlmcp_flow_jsonrpc:encode({request, Id, Method, Params}),
    [Bin, $\n].

%% An agent's answer to the task request `Id'.
respond(S, Id, Outcome) ->
    {ok, Bin} = erlmcp_flow_jsonrpc:encode({response, Id, Outcome}),
    gen_tcp:send(S, [Bin, $\n]).

route(Id) ->
    request(Id, <<"flow.route_task">>, #{task => #{n => Id},
                                         requirements => #{capabilities => [<<"echo">>]}}).

recv_json(S) ->
    {ok, Line} = gen_tcp:recv(S, 0, 5000),
    erlmcp_flow_test_json:decode(Line).

token_test() ->
    tcp(#{token => ?TOKEN},
        fun() ->
                %% anything before flow.authenticate: an error, then closed
                S1 = connect(),
                ok = gen_tcp:send(S1, route(1)),
                ?assertMatch(#{<<"error">> := #{<<"code">> := -32000}}, recv_json(S1)),
                ?assertEqual({error, closed}, gen_tcp:recv(S1, 0, 5000)),
                %% a wrong token: the same
                S2 = connect(),
                ok = gen_tcp:send(S2, request(1, <<"flow.authenticate">>, #{token => <<"nope">>})),
                ?assertMatch(#{<<"error">> := #{<<"message">> := <<"Unauthorized">>}}, recv_json(S2)),
                ?assertEqual({error, closed}, gen_tcp:recv(S2, 0, 5000)),
                %% the right one, then requests
                S3 = connect(),
                ok = gen_tcp:send(S3, request(1, <<"flow.authenticate">>, #{token => ?TOKEN})),
                ?assertMatch(#{<<"id">> := 1, <<"result">> := #{<<"authenticated">> := true}},
                             recv_json(S3)),
                ok = gen_tcp:send(S3, route(2)),
                ?assertMatch(#{<<"id">> := 2, <<"result">> := #{<<"agent_id">> := <<"echo-1">>}},
                             recv_json(S3)),
                gen_tcp:close(S3)
        end).

max_connections_test() ->
    tcp(#{max_connections => 2},
        fun() ->
                [A, B] = [connect(), connect()],
                %% both are served (and so counted) before the third comes
                [begin ok = gen_tcp:send(S, route(1)), #{<<"result">> := _} = recv_json(S) end
                 || S <- [A, B]],
                C = connect(),
                ?assertMatch(#{<<"error">> := #{<<"message">> := <<"Too many connections">>}},
                             recv_json(C)),
                ?assertEqual({error, closed}, gen_tcp:recv(C, 0, 5000)),
                %% the first two still work; one gone makes room
                ok = gen_tcp:send(A, route(2)),
                ?assertMatch(#{<<"id">> := 2}, recv_json(A)),
                gen_tcp:close(B),
                wait_until(fun() ->
                                   D = connect(),
                                   ok = gen_tcp:send(D, route(3)),
                                   Answer = recv_json(D),
                                   gen_tcp:close(D),
                                   is_map_key(<<"result">>, Answer)
                           end),
                gen_tcp:close(A)
        end).

%% 500 requests in one write: 500 answers, one per id (answers that are
%% ready together leave in one write; none is lost or doubled).
pipelined_test() ->
    tcp(#{},
        fun() ->
                S = connect(),
                ok = gen_tcp:send(S, [route(I) || I <- lists:seq(1, 500)]),
                Ids = [maps:get(<<"id">>, recv_json(S)) || _ <- lists:seq(1, 500)],
                ?assertEqual(lists:seq(1, 500), lists:sort(Ids)),
                ?assertEqual({error, timeout}, gen_tcp:recv(S, 0, 100)),
                gen_tcp:close(S)
        end).

%% A client that sends half a line and stalls, and one that pipelines
%% requests and never reads its answers, leave another connection served.
stalled_clients_test() ->
    tcp(#{},
        fun() ->
                Half = connect(),
                ok = gen_tcp:send(Half, <<"{\"jsonrpc\":\"2.0\",\"method\":\"flow.st">>),
                {ok, Deaf} = gen_tcp:connect({127, 0, 0, 1}, erlmcp_flow_transport:port(tcp),
                                             [binary, {active, false}, {recbuf, 4096}]),
                ok = gen_tcp:send(Deaf, [route(I) || I <- lists:seq(1, 2000)]),
                Other = connect(),
                [begin
                     ok = gen_tcp:send(Other, route(I)),
                     ?assertMatch(#{<<"id">> := I, <<"result">> := _}, recv_json(Other))
                 end || I <- lists:seq(1, 50)],
                [gen_tcp:close(S) || S <- [Half, Deaf, Other]]
        end).

%% A client connection with nothing to do is closed after idle_timeout_ms;
%% a connection that is an agent stays.
idle_timeout_test() ->
    tcp(#{idle_timeout_ms => 200},
        fun() ->
                Client = connect(),
                ok = gen_tcp:send(Client, route(1)),
                ?assertMatch(#{<<"id">> := 1}, recv_json(Client)),
                ?assertEqual({error, closed}, gen_tcp:recv(Client, 0, 5000)),
                Agent = connect(),
                ok = gen_tcp:send(Agent, request(1, <<"flow.register_agent">>,
                                                 #{agent_id => <<"tcp-agent">>,
                                                   capabilities => [<<"tcp">>]})),
                ?assertMatch(#{<<"result">> := #{<<"registered">> := true}}, recv_json(Agent)),
                %% three idle periods later it is still there and serves a task
                ?assertEqual({error, timeout}, gen_tcp:recv(Agent, 0, 700)),
                Self = self(),
                spawn_link(fun() ->
                                   Self ! {answer, erlmcp_flow:execute(#{}, #{capabilities => [<<"tcp">>]})}
                           end),
                #{<<"id">> := TaskId, <<"method">> := <<"flow.execute_task">>} = recv_json(Agent),
                ok = gen_tcp:send(Agent, [<<"{\"jsonrpc\":\"2.0\",\"result\":7,\"id\":">>,
                                          integer_to_binary(TaskId), <<"}\n">>]),
                receive {answer, A} -> ?assertMatch({ok, 7, #{agent_id := <<"tcp-agent">>}}, A)
                after 5000 -> error(no_answer)
                end,
                gen_tcp:close(Agent)
        end).

%% An agent over TCP, message by message: CRLF line ends, a batch, refused
%% and malformed registrations, a task it answers with an error, a task the
%% router stops waiting for (flow.cancel_task reaches the client, its late
%% answer is dropped), the trace headers a task carries, a task that cannot
%% be encoded, and the connection closed by close/1.
tcp_agent_protocol_test() ->
    tcp(#{},
        fun() ->
                Agent = connect(),
                Register = fun(Id, Params) ->
                                   ok = gen_tcp:send(Agent, request(Id, <<"flow.register_agent">>, Params)),
                                   recv_json(Agent)
                           end,
                ?assertMatch(#{<<"error">> := #{<<"code">> := -32602}},
                             Register(1, #{agent_id => <<"proto">>})),
                %% a local agent's id: never from the network
                ?assertMatch(#{<<"error">> := #{<<"code">> := -32013,
                                                <<"message">> := <<"Registration refused">>,
                                                <<"data">> := #{<<"reason">> := <<"{reserved,<<\"echo-1\">>}">>}}},
                             Register(2, #{agent_id => <<"echo-1">>, capabilities => [<<"p">>]})),
                %% CRLF line ends are accepted
                {ok, Reg} = erlmcp_flow_jsonrpc:encode({request, 3, <<"flow.register_agent">>,
                                                        #{agent_id => <<"proto">>, capabilities => [<<"p">>]}}),
                ok = gen_tcp:send(Agent, [Reg, <<"\r\n\r\n">>]),
                ?assertMatch(#{<<"id">> := 3, <<"result">> := #{<<"registered">> := true}}, recv_json(Agent)),
                %% a batch of requests: one answer, a list
                {ok, B1} = erlmcp_flow_jsonrpc:encode({request, 4, <<"flow.stats">>, #{}}),
                {ok, B2} = erlmcp_flow_jsonrpc:encode({request, 5, <<"flow.find_agent">>, #{agent_id => <<"proto">>}}),
                ok = gen_tcp:send(Agent, [$[, B1, $,, B2, $], $\n]),
                ?assertMatch([#{<<"id">> := _}, #{<<"id">> := _}], recv_json(Agent)),
                %% an empty line, a batch of notifications only: nothing said;
                %% flow.authenticate where no token is set: yes
                {ok, N1} = erlmcp_flow_jsonrpc:encode({notification, <<"flow.stats">>, #{}}),
                ok = gen_tcp:send(Agent, [<<"\n">>, $[, N1, $,, N1, $], $\n]),
                ok = gen_tcp:send(Agent, request(6, <<"flow.authenticate">>, #{token => <<"any">>})),
                ?assertMatch(#{<<"id">> := 6, <<"result">> := #{<<"authenticated">> := true}}, recv_json(Agent)),
                Self = self(),
                Run = fun(Task, Req, Opts) ->
                              spawn_link(fun() -> Self ! {answer, erlmcp_flow:execute(Task, Req, Opts)} end)
                      end,
                Answer = fun() -> receive {answer, A} -> A after 5000 -> error(no_answer) end end,
                Req = #{capabilities => [<<"p">>], idempotent => false},
                %% the client answers with an error object
                Run(#{n => 1}, Req, #{}),
                #{<<"id">> := T1, <<"params">> := #{<<"task">> := #{<<"n">> := 1}}} = recv_json(Agent),
                ok = respond(Agent, T1, {error, 42, <<"no">>, undefined}),
                ?assertMatch({error, {agent_error, {rpc_error, 42, <<"no">>}}}, Answer()),
                %% invalid params: the task is the caller's error, refused
                Run(#{n => 1}, Req, #{}),
                #{<<"id">> := T1b} = recv_json(Agent),
                ok = respond(Agent, T1b, {error, -32602, <<"n must be even">>, undefined}),
                ?assertMatch({error, {rejected, {rpc_error, -32602, <<"n must be even">>}}}, Answer()),
                %% a JSON-RPC caller gets the agent's own error, code and message
                spawn_link(fun() ->
                                   Self ! {answer, erlmcp_flow_rpc:handle(
                                                     <<"flow.route_task">>,
                                                     #{<<"task">> => #{<<"n">> => 1},
                                                       <<"requirements">> =>
                                                           #{<<"capabilities">> => [<<"p">>],
                                                             <<"idempotent">> => false}},
                                                     #{transport => http})}
                           end),
                #{<<"id">> := T1c} = recv_json(Agent),
                ok = respond(Agent, T1c, {error, -32602, <<"n must be even">>, undefined}),
                ?assertEqual({error, -32602, <<"n must be even">>, #{class => rejected}}, Answer()),
                %% the router stops waiting: the client is told, its late answer dropped
                TP = <<"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01">>,
                Run(#{n => 2}, Req#{traceparent => TP, tracestate => <<"k=v">>},
                    #{timeout => 200}),
                #{<<"id">> := T2, <<"params">> := #{<<"trace">> := Trace}} = recv_json(Agent),
                ?assertMatch(#{<<"tracestate">> := <<"k=v">>, <<"traceparent">> := <<"00-0af7651916cd43dd8448eb211c80319c-", _/binary>>},
                             Trace),
                ?assertEqual({error, execution_timeout}, Answer()),
                ?assertMatch(#{<<"method">> := <<"flow.cancel_task">>, <<"params">> := #{<<"id">> := T2}},
                             recv_json(Agent)),
                ok = respond(Agent, T2, {ok, late}),
                %% a task JSON cannot carry
                Run(#{pid => self()}, Req, #{}),
                ?assertMatch({error, {rejected, {unencodable_task, _}}}, Answer()),
                %% still serving; then closed from this side
                Run(#{n => 3}, Req, #{}),
                #{<<"id">> := T3} = recv_json(Agent),
                ok = respond(Agent, T3, {ok, 3}),
                ?assertMatch({ok, 3, #{agent_id := <<"proto">>}}, Answer()),
                {ok, ConnPid} = erlmcp_flow:find_agent(<<"proto">>),
                ?assertEqual({error, unknown_call}, gen_server:call(ConnPid, nonsense)),
                ok = gen_server:cast(ConnPid, nonsense),
                %% the listener's word to close (erlmcp_flow_listener)
                ConnPid ! {erlmcp_flow_listener, close},
                ?assertEqual({error, closed}, gen_tcp:recv(Agent, 0, 5000)),
                wait_until(fun() -> {error, not_found} =:= erlmcp_flow:find_agent(<<"proto">>) end)
        end).
