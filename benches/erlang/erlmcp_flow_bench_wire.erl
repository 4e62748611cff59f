%% What hostile clients make a node hold (issue 26's attacks, as it reports
%% them), measured on the node's resident memory (OS RSS, sampled every
%% 50 ms) with the clients in another OS process (a peer node), so that
%% their own buffers are not counted:
%%
%%   flood: 4 connections write 25 000 flow.route_task lines each in one
%%          write (after flow.authenticate); a fifth client runs 200
%%          requests meanwhile. Every answer counted by kind.
%%   deaf:  3 connections write 25 000 lines each and never read; how long
%%          until the node has cut them off.
%%   agents: 100 connections register 1 000 agents each (100 000); the
%%          size and time of GET /metrics.
%%
%%   make bench-wire
%%
%% The per-client rate limit is off here (every client is 127.0.0.1): the
%% bounds measured are the in-flight ones; the rate limit is tested.
%%
%% Results to _build/bench/wire.json (WIRE_JSON).
-module(erlmcp_flow_bench_wire).

-export([main/0, run/0]).
%% run on the client peer
-export([flood_client/4, deaf_client/3, agents_client/4, sequential/3]).

-define(TOKEN, <<"0123456789abcdef0123">>).

main() ->
    Status = try
                 Results = run(),
                 Path = os:getenv("WIRE_JSON", "_build/bench/wire.json"),
                 ok = filelib:ensure_dir(Path),
                 ok = file:write_file(Path, [erlmcp_flow_bench:json(Results), $\n]),
                 io:format("~p~nresults written to ~s~n", [Results, Path]),
                 0
             catch C:R:S ->
                     io:format("wire bench failed: ~p:~p~n~p~n", [C, R, S]),
                     1
             end,
    halt(Status).

run() ->
    logger:set_primary_config(level, error),
    _ = application:load(erlmcp_flow),
    ok = application:set_env(erlmcp_flow, transports,
                             #{tcp => #{enabled => true, port => 0, token => ?TOKEN, rate_limit => infinity},
                               http => #{enabled => true, port => 0}}),
    ok = application:set_env(erlmcp_flow, metrics, #{http => true, port => 0}),
    {ok, _} = application:ensure_all_started(erlmcp_flow),
    [ok = erlmcp_flow:register_agent(<<"echo-", (integer_to_binary(I))/binary>>, echo(), [<<"echo">>])
     || I <- lists:seq(1, 8)],
    Port = erlmcp_flow_transport:port(tcp),
    {ok, Peer, _} = peer:start(#{name => peer:random_name("wire_clients"), connection => standard_io,
                                 args => ["-pa", filename:dirname(code:which(?MODULE)),
                                          "-pa", filename:dirname(code:which(erlmcp_flow_jsonrpc))]}),
    try
        Base = rss_mb(),
        Flood = measure(fun() -> flood(Peer, Port) end),
        AfterFlood = settle(),
        Deaf = measure(fun() -> deaf(Peer, Port) end),
        AfterDeaf = settle(),
        Agents = measure(fun() -> agents(Peer, Port) end),
        #{rss_start_mb => Base, flood => Flood, rss_after_flood_mb => AfterFlood,
          deaf => Deaf, rss_after_deaf_mb => AfterDeaf, agents => Agents}
    after
        peer:stop(Peer)
    end.

echo() ->
    spawn(fun Loop() ->
                  receive {execute_task, T, _, From, Ref} -> From ! {task_result, Ref, {ok, T}}, Loop() end
          end).

%% Runs `Fun' while sampling the node's RSS: its result with the peak.
measure(Fun) ->
    Self = self(),
    Sampler = spawn_link(fun() -> sample(Self, 0) end),
    Result = Fun(),
    Sampler ! stop,
    Peak = receive {peak, P} -> P end,
    Result#{rss_peak_mb => Peak}.

sample(Parent, Peak) ->
    receive stop -> Parent ! {peak, Peak}
    after 50 -> sample(Parent, max(Peak, rss_mb()))
    end.

settle() ->
    [erlang:garbage_collect(P) || P <- erlang:processes()],
    timer:sleep(500),
    rss_mb().

flood(Peer, Port) ->
    T0 = erlang:monotonic_time(millisecond),
    Self = self(),
    Floods = [spawn_link(fun() -> Self ! {flood, self(), peer:call(Peer, ?MODULE, flood_client,
                                                                    [Port, 25000, ?TOKEN, I], 600000)} end)
              || I <- lists:seq(1, 4)],
    timer:sleep(200),
    Legit = peer:call(Peer, ?MODULE, sequential, [Port, 200, ?TOKEN], 600000),
    Counts = [receive {flood, F, C} -> C end || F <- Floods],
    Sum = fun(K) -> lists:sum([maps:get(K, C, 0) || C <- Counts]) end,
    #{requests => 100000, ok => Sum(ok), overloaded => Sum(-32002), internal => Sum(-32603),
      other => Sum(other), seconds => (erlang:monotonic_time(millisecond) - T0) / 1000,
      legit => Legit}.

deaf(Peer, Port) ->
    T0 = erlang:monotonic_time(millisecond),
    ok = peer:call(Peer, ?MODULE, deaf_client, [Port, 25000, 3], 60000),
    %% cut off (a write blocked 5 s), or idle with everything written (the
    %% answers sit in the sockets' buffers): either way nothing held
    Cut = wait_connections(0, T0 + 20000),
    #{connections => 3,
      cut_after_s => case Cut of
                         timeout -> null;
                         T -> (T - T0) / 1000
                     end,
      open_after_20_s => erlmcp_flow_listener:connections(erlmcp_flow_rpc_tcp),
      held_after_20_s => erlmcp_flow_listener_server:in_flight(erlmcp_flow_rpc_tcp)}.

wait_connections(N, Deadline) ->
    Now = erlang:monotonic_time(millisecond),
    case erlmcp_flow_listener:connections(erlmcp_flow_rpc_tcp) =< N of
        true -> Now;
        false when Now > Deadline -> timeout;
        false -> timer:sleep(100), wait_connections(N, Deadline)
    end.

agents(Peer, Port) ->
    Registered = peer:call(Peer, ?MODULE, agents_client, [Port, 100, 1000, ?TOKEN], 600000),
    {ok, _} = application:ensure_all_started(inets),
    Url = "http://127.0.0.1:" ++ integer_to_list(erlmcp_flow_metrics_http:port()) ++ "/metrics",
    T0 = erlang:monotonic_time(microsecond),
    {ok, {{_, 200, _}, _, Body}} = httpc:request(get, {Url, []}, [], [{body_format, binary}]),
    Ms = (erlang:monotonic_time(microsecond) - T0) / 1000,
    #{agents => Registered, metrics_bytes => byte_size(Body), metrics_ms => Ms,
      core_bytes_per_agent => maps:get(bytes_per_agent, erlmcp_flow:memory())}.

rss_mb() ->
    {ok, B} = file:read_file("/proc/self/status"),
    [Kb] = [binary_to_integer(string:trim(hd(binary:split(V, <<"kB">>))))
            || L <- binary:split(B, <<"\n">>, [global]), <<"VmRSS:", V/binary>> <- [L]],
    Kb div 1024.

%%--------------------------------------------------------------------
%% On the client peer
%%--------------------------------------------------------------------

connect(Port, Token, Opts) ->
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false} | Opts]),
    ok = gen_tcp:send(S, line(0, <<"flow.authenticate">>, #{token => Token})),
    S.

line(Id, Method, Params) ->
    {ok, Bin} = erlmcp_flow_jsonrpc:encode({request, Id, Method, Params}),
    [Bin, $\n].

route(Id) ->
    line(Id, <<"flow.route_task">>, #{task => #{n => Id}, requirements => #{capabilities => [<<"echo">>]}}).

flood_client(Port, N, Token, _I) ->
    S = connect(Port, Token, [{packet, line}, {recbuf, 1 bsl 20}]),
    {ok, _} = gen_tcp:recv(S, 0, 10000),
    ok = gen_tcp:send(S, [route(I) || I <- lists:seq(1, N)]),
    count(S, N, #{}).

count(S, 0, Acc) ->
    gen_tcp:close(S),
    Acc;
count(S, N, Acc) ->
    case gen_tcp:recv(S, 0, 120000) of
        {ok, Line} ->
            Kind = case binary:match(Line, <<"\"error\"">>) of
                       nomatch -> ok;
                       _ -> case re:run(Line, <<"\"code\":(-?\\d+)">>, [{capture, all_but_first, binary}]) of
                                {match, [C]} -> binary_to_integer(C);
                                nomatch -> other
                            end
                   end,
            count(S, N - 1, maps:update_with(Kind, fun(V) -> V + 1 end, 1, Acc));
        {error, Why} ->
            gen_tcp:close(S),
            Acc#{lost => N, error => Why}
    end.

%% `N' requests one after another: latencies (ms) at p50 and p99, failures.
sequential(Port, N, Token) ->
    S = connect(Port, Token, [{packet, line}]),
    {ok, _} = gen_tcp:recv(S, 0, 10000),
    Lat = [begin
               T0 = erlang:monotonic_time(microsecond),
               ok = gen_tcp:send(S, route(I)),
               R = gen_tcp:recv(S, 0, 60000),
               {(erlang:monotonic_time(microsecond) - T0) / 1000,
                case R of {ok, L} -> binary:match(L, <<"\"result\"">>) =/= nomatch; _ -> false end}
           end || I <- lists:seq(1, N)],
    gen_tcp:close(S),
    Sorted = lists:sort([L || {L, _} <- Lat]),
    #{p50_ms => lists:nth(N div 2, Sorted), p99_ms => lists:nth(N * 99 div 100, Sorted),
      failed => length([x || {_, false} <- Lat])}.

deaf_client(Port, N, Conns) ->
    _ = [spawn(fun() ->
                       S = connect(Port, ?TOKEN, [{recbuf, 4096}]),
                       _ = gen_tcp:send(S, [route(I) || I <- lists:seq(1, N)]),
                       receive never -> ok end
               end) || _ <- lists:seq(1, Conns)],
    ok.

agents_client(Port, Conns, PerConn, Token) ->
    %% authenticated one after another (unauthenticated connections have a
    %% pool of their own, smaller than 100), then registering all at once
    Sockets = [begin
                   S = connect(Port, Token, [{packet, line}]),
                   {ok, _} = gen_tcp:recv(S, 0, 10000),
                   S
               end || _ <- lists:seq(1, Conns)],
    [ok = gen_tcp:send(S, [line(I, <<"flow.register_agent">>,
                                #{agent_id => iolist_to_binary(io_lib:format("w~b-~b", [C, I])),
                                  capabilities => [<<"w">>]})
                           || I <- lists:seq(1, PerConn)])
     || {C, S} <- lists:zip(lists:seq(1, Conns), Sockets)],
    %% the connections stay open (their agents with them) until the peer stops
    lists:sum([length([x || _ <- lists:seq(1, PerConn),
                            {ok, L} <- [gen_tcp:recv(S, 0, 60000)],
                            binary:match(L, <<"registered">>) =/= nomatch])
               || S <- Sockets]).
