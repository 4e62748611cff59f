%% Metrics: the figures of stats/0 and agent_stats/1, the Prometheus
%% exposition, and the /metrics listener scraped over a real socket.
-module(erlmcp_flow_metrics_tests).

-include_lib("eunit/include/eunit.hrl").

-import(erlmcp_flow_test_util, [raw_agent/1, echo_agent/0, with_env/2]).

-define(FAST, #{base_retry_delay => 0, max_retry_delay => 0}).

rate_test() ->
    ?assertEqual(100.0, erlmcp_flow_metrics:tasks_per_second(0, 1000, 100, 2000)),
    ?assertEqual(2500.0, erlmcp_flow_metrics:tasks_per_second(10, 0, 60, 20)),
    ?assertEqual(0.0, erlmcp_flow_metrics:tasks_per_second(5, 7, 9, 7)),
    %% a counter that went back (a restarted router) gives no negative rate
    ?assertEqual(0.0, erlmcp_flow_metrics:tasks_per_second(50, 0, 3, 1000)).

metrics_test_() ->
    {foreach,
     fun erlmcp_flow_test_util:start/0,
     fun erlmcp_flow_test_util:stop_drained/1,
     [{"stats/0 has every global figure", fun global/0},
      {"agent_stats/1 has every per-agent figure", fun per_agent/0},
      {"the exposition parses and carries the figures", fun exposition/0},
      {"the listener is off by default", fun off_by_default/0}]}.

global() ->
    ok = erlmcp_flow:register_agent(<<"bad">>, raw_agent(fun(_) -> {error, no} end), [<<"x">>]),
    ok = erlmcp_flow:register_agent(<<"good">>, echo_agent(), [<<"x">>]),
    _ = erlmcp_flow_metrics:tick(),
    Answers = [erlmcp_flow:execute(#{}, #{strategy => round_robin}, ?FAST)
               || _ <- lists:seq(1, 200)],
    spin_a_millisecond(),
    _ = erlmcp_flow_metrics:tick(),
    S = erlmcp_flow:stats(),
    Keys = [agents, in_flight, completed, tasks_succeeded, tasks_failed, tasks_per_second,
            episodes, epsilon, retries,
            fallbacks, overloaded, breaker_opened, breaker_half_opened, breaker_closed,
            decision_p50_us, decision_p90_us, decision_p99_us, decision_max_us,
            decision_sum_us, decision_samples, correlation_entries, correlation_open,
            correlation_evicted,
            correlation_expired, spans_exported, export_failures, spans_lost, export_dropped],
    ?assertEqual([], Keys -- maps:keys(S)),
    [?assert(is_number(maps:get(K, S))) || K <- Keys],
    Attempts = lists:sum([N || {ok, _, #{attempts := N}} <- Answers]),
    ?assertEqual(200, length([ok || {ok, _, _} <- Answers])),
    #{completed := Completed, retries := Retries, tasks_per_second := Rate,
      decision_samples := Samples, correlation_entries := Entries} = S,
    ?assertEqual(Attempts, Completed),
    ?assertMatch(#{tasks_succeeded := 200, tasks_failed := 0}, S),
    ?assertEqual(Attempts - 200, Retries),
    ?assert(Rate > 0),
    %% one decision in 64 is timed
    ?assert(Samples >= Attempts div 64 - 3 andalso Samples =< Attempts div 64 + 3),
    ?assertEqual(200 + Attempts, Entries),
    %% the breaker of the bad agent opened (5 failures in a row by default)
    ?assert(maps:get(breaker_opened, S) >= 1).

per_agent() ->
    ok = erlmcp_flow:register_agent(<<"a">>, echo_agent(), [<<"x">>]),
    [{ok, _, _} = erlmcp_flow:execute(#{}, #{}) || _ <- lists:seq(1, 20)],
    {ok, A} = erlmcp_flow:agent_stats(<<"a">>),
    ?assertMatch(#{in_flight := 0, dispatched := 20, succeeded := 20, failed := 0,
                   timed_out := 0, down := 0, success_rate := 1.0, breaker := closed}, A),
    [?assert(is_number(maps:get(K, A))) || K <- [ewma_latency_us, p50_us, p95_us, p99_us]],
    #{p50_us := P50, p95_us := P95, p99_us := P99} = A,
    ?assert(P50 =< P95 andalso P95 =< P99).

exposition() ->
    Weird = <<"we\"ird\\id\nx">>,
    ok = erlmcp_flow:register_agent(<<"a">>, echo_agent(), [<<"x">>]),
    ok = erlmcp_flow:register_agent(Weird, raw_agent(fun(_) -> {error, no} end), [<<"y">>]),
    [{ok, _, _} = erlmcp_flow:execute(#{}, #{capabilities => [<<"x">>]}) || _ <- lists:seq(1, 7)],
    [{error, _} = erlmcp_flow:execute(#{}, #{capabilities => [<<"y">>]}, ?FAST)
     || _ <- lists:seq(1, 3)],
    Body = iolist_to_binary(erlmcp_flow_prometheus:render()),
    {ok, Types, Samples} = erlmcp_flow_test_prometheus:parse(Body),
    ?assertEqual(summary, maps:get(<<"erlmcp_flow_decision_latency_seconds">>, Types)),
    ?assertEqual(counter, maps:get(<<"erlmcp_flow_agent_tasks_total">>, Types)),
    Get = fun(Name, Labels) ->
                  [V] = [V || {N, L, V} <- Samples, N =:= Name, L =:= Labels],
                  V
          end,
    ?assertEqual(2, Get(<<"erlmcp_flow_agents">>, #{})),
    ?assertEqual(7, Get(<<"erlmcp_flow_agent_tasks_total">>, #{<<"agent">> => <<"a">>})),
    ?assertEqual(1.0, Get(<<"erlmcp_flow_agent_success_ratio">>, #{<<"agent">> => <<"a">>})),
    %% the weird id came back whole through the escaping
    {ok, #{failed := Failed, timed_out := 0, down := 0}} = erlmcp_flow:agent_stats(Weird),
    ?assert(Failed >= 3),
    ?assertEqual(Failed, Get(<<"erlmcp_flow_agent_failures_total">>, #{<<"agent">> => Weird})),
    ?assertEqual(1, Get(<<"erlmcp_flow_agent_breaker_state">>,
                        #{<<"agent">> => <<"a">>, <<"state">> => <<"closed">>})),
    ?assertEqual(0, Get(<<"erlmcp_flow_agent_breaker_state">>,
                        #{<<"agent">> => <<"a">>, <<"state">> => <<"open">>})),
    P99 = Get(<<"erlmcp_flow_agent_latency_seconds">>,
              #{<<"agent">> => <<"a">>, <<"quantile">> => <<"0.99">>}),
    ?assert(is_float(P99) andalso P99 > 0),
    ?assert(is_float(Get(<<"erlmcp_flow_decision_latency_seconds">>,
                         #{<<"quantile">> => <<"0.99">>}))),
    %% tasks and attempts are separate families: 10 tasks, each of the 3
    %% failed ones after several attempts
    ?assertEqual(7, Get(<<"erlmcp_flow_tasks_total">>, #{<<"outcome">> => <<"ok">>})),
    ?assertEqual(3, Get(<<"erlmcp_flow_tasks_total">>, #{<<"outcome">> => <<"error">>})),
    ?assertEqual(7 + Failed, Get(<<"erlmcp_flow_attempts_total">>, #{})),
    ?assertEqual(error, maps:find(<<"erlmcp_flow_tasks_completed_total">>, Types)),
    ?assertEqual(10 + 7 + Failed, Get(<<"erlmcp_flow_correlation_entries">>, #{})).

off_by_default() ->
    ?assertEqual(undefined, erlmcp_flow_metrics_http:port()),
    ?assertEqual(undefined, whereis(erlmcp_flow_metrics_http)).

scrape_test() ->
    with_env([{metrics, #{http => true, port => 0}}],
             fun() ->
                     Port = erlmcp_flow_metrics_http:port(),
                     ?assert(is_integer(Port) andalso Port > 0),
                     ok = erlmcp_flow:register_agent(<<"a">>, echo_agent(), [<<"x">>]),
                     [{ok, _, _} = erlmcp_flow:execute(#{}, #{}) || _ <- lists:seq(1, 5)],
                     Url = "http://127.0.0.1:" ++ integer_to_list(Port),
                     {ok, {{_, 200, _}, Headers, Body}} =
                         httpc:request(get, {Url ++ "/metrics", []}, [],
                                       [{body_format, binary}]),
                     ?assertEqual("text/plain; version=0.0.4; charset=utf-8",
                                  proplists:get_value("content-type", Headers)),
                     {ok, _, Samples} = erlmcp_flow_test_prometheus:parse(Body),
                     ?assert(length(Samples) > 30),
                     ?assert(lists:member({<<"erlmcp_flow_agent_tasks_total">>,
                                           #{<<"agent">> => <<"a">>}, 5}, Samples)),
                     ?assertMatch({ok, {{_, 404, _}, _, _}},
                                  httpc:request(get, {Url ++ "/other", []}, [], [])),
                     ?assertMatch({ok, {{_, 405, _}, _, _}},
                                  httpc:request(post, {Url ++ "/metrics", [], "text/plain", "x"},
                                                [], [])),
                     %% loopback only by default
                     {ok, Other} = non_loopback_address(),
                     ?assertMatch({error, _}, gen_tcp:connect(Other, Port, [], 1000))
             end).

%% A port already taken: the start fails with the listener's reason at the
%% top of the error (not deep in supervisor reports), one log line says it,
%% and nothing is left running.
port_taken_test() ->
    _ = application:stop(erlmcp_flow),
    {ok, _} = application:ensure_all_started(inets),
    _ = application:load(erlmcp_flow),
    {ok, L} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, Port} = inet:port(L),
    application:set_env(erlmcp_flow, metrics, #{http => true, port => Port}),
    try
        Logged = erlmcp_flow_test_util:capture_log(
                   fun() ->
                           ?assertMatch({error, {{metrics_http, {127, 0, 0, 1}, Port, eaddrinuse},
                                                 {erlmcp_flow_app, start, _}}},
                                        application:start(erlmcp_flow))
                   end),
        ?assertEqual(undefined, whereis(erlmcp_flow_sup)),
        %% our one sentence, and no supervisor's report (the application
        %% master's crash report of any failed start is OTP's own)
        [Line] = [L1 || {error, "erlmcp_flow:" ++ _ = L1} <- Logged],
        ?assertMatch({match, _}, re:run(Line, "cannot listen for /metrics on 127.0.0.1 port "
                                        ++ integer_to_list(Port))),
        ?assertEqual([], [L2 || {_, L2} <- Logged, string:find(L2, "supervisor") =/= nomatch])
    after
        application:unset_env(erlmcp_flow, metrics),
        gen_tcp:close(L)
    end.

%% An address of this host that is not loopback, when it has one.
non_loopback_address() ->
    {ok, Ifs} = inet:getifaddrs(),
    case [A || {_, Opts} <- Ifs, {addr, A} <- Opts, tuple_size(A) =:= 4,
               element(1, A) =/= 127] of
        [A | _] -> {ok, A};
        [] -> {ok, {127, 0, 0, 2}}  % still not the bound 127.0.0.1
    end.

spin_a_millisecond() ->
    T0 = erlang:monotonic_time(millisecond),
    spin_until(T0 + 1).

spin_until(T) ->
    case erlang:monotonic_time(millisecond) >= T of
        true -> ok;
        false -> erlang:yield(), spin_until(T)
    end.

%% The report: sixteen idle connections locked /metrics out (503 for
%% every scrape); 2 000 idle or 200 slowloris connections did for a whole
%% run. Here, with a limit of 32 connections: 200 idle connections and 50
%% sending a byte every 100 ms, and scrapes through fresh connections all
%% the while, each answered within a second.
attack_test_() ->
    {timeout, 60,
     fun() ->
             with_env([{metrics, #{http => true, port => 0, max_connections => 32,
                                   request_timeout_ms => 3000, idle_timeout_ms => 3000}}],
                      fun attack/0)
     end}.

attack() ->
    Port = erlmcp_flow_metrics_http:port(),
    Connect = fun() -> gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}], 1000) end,
    Idle = [S || _ <- lists:seq(1, 200), {ok, S} <- [Connect()]],
    Owner = self(),
    Slow = [spawn_link(fun() ->
                               {ok, S} = Connect(),
                               slowloris(S, <<"GET /metrics HTTP/1.1\r\nHost: x\r\n">>),
                               Owner ! {slow_done, self()}
                       end) || _ <- lists:seq(1, 50)],
    Times = [begin
                 receive after 50 -> ok end,
                 {T, {200, _}} = timer:tc(fun() -> scrape(Port) end),
                 T
             end || _ <- lists:seq(1, 20)],
    ?assert(lists:max(Times) < 1000000),
    ?assert(erlmcp_flow_listener:connections(erlmcp_flow_metrics_http) =< 32),
    [gen_tcp:close(S) || S <- Idle],
    [begin unlink(P), exit(P, kill) end || P <- Slow],
    %% idle and slow connections are dropped by the timeouts: nothing is
    %% left open once the attack stops
    erlmcp_flow_test_util:wait_until(
      fun() -> erlmcp_flow_listener:connections(erlmcp_flow_metrics_http) =:= 0 end).

slowloris(S, <<B, Rest/binary>>) ->
    case gen_tcp:send(S, <<B>>) of
        ok -> receive after 100 -> slowloris(S, Rest) end;
        {error, _} -> ok
    end;
slowloris(_S, <<>>) ->
    ok.

%% One GET /metrics on a fresh connection: {Status, Body}.
scrape(Port) ->
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}, {packet, http_bin}],
                              1000),
    ok = gen_tcp:send(S, <<"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n">>),
    {ok, {http_response, _, Status, _}} = gen_tcp:recv(S, 0, 1000),
    Length = headers_length(S),
    ok = inet:setopts(S, [{packet, raw}]),
    {ok, Body} = case Length of
                     0 -> {ok, <<>>};
                     _ -> gen_tcp:recv(S, Length, 1000)
                 end,
    gen_tcp:close(S),
    {Status, Body}.

headers_length(S) ->
    headers_length(S, 0).

headers_length(S, L) ->
    case gen_tcp:recv(S, 0, 1000) of
        {ok, {http_header, _, 'Content-Length', _, V}} -> headers_length(S, binary_to_integer(V));
        {ok, {http_header, _, _, _, _}} -> headers_length(S, L);
        {ok, http_eoh} -> L
    end.

%% Keep-alive, the idle timeout, and requests the listener refuses.
keep_alive_and_bad_requests_test() ->
    with_env([{metrics, #{http => true, port => 0, idle_timeout_ms => 200,
                          request_timeout_ms => 200}}],
             fun() ->
                     Port = erlmcp_flow_metrics_http:port(),
                     {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port,
                                               [binary, {active, false}, {packet, http_bin}]),
                     [begin
                          ok = gen_tcp:send(S, <<"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n">>),
                          {ok, {http_response, _, 200, _}} = gen_tcp:recv(S, 0, 1000),
                          L = headers_length(S),
                          ok = inet:setopts(S, [{packet, raw}]),
                          {ok, _} = gen_tcp:recv(S, L, 1000),
                          ok = inet:setopts(S, [{packet, http_bin}])
                      end || _ <- [1, 2, 3]],
                     %% idle past the timeout: closed by the listener
                     ?assertEqual({error, closed}, gen_tcp:recv(S, 0, 2000)),
                     %% a request that never ends: closed at the request timeout
                     {ok, S2} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}]),
                     ok = gen_tcp:send(S2, <<"GET /metr">>),
                     ?assertEqual({error, closed}, gen_tcp:recv(S2, 0, 2000)),
                     %% garbage, too many headers, a body too large
                     ?assertMatch({400, _}, raw_request(Port, <<"NONSENSE\r\n\r\n">>)),
                     Many = iolist_to_binary([["X-H", integer_to_binary(I), ": v\r\n"]
                                              || I <- lists:seq(1, 70)]),
                     ?assertMatch({431, _}, raw_request(Port, <<"GET /metrics HTTP/1.1\r\nHost: x\r\n",
                                                                Many/binary, "\r\n">>)),
                     ?assertMatch({413, _}, raw_request(Port, <<"POST /metrics HTTP/1.1\r\nHost: x\r\n"
                                                                "Content-Length: 99999999\r\n\r\n">>)),
                     %% a body within the limit is read, then answered 405
                     ?assertMatch({405, _}, raw_request(Port, <<"POST /metrics HTTP/1.1\r\nHost: x\r\n"
                                                                "Content-Length: 3\r\n\r\nabc">>))
             end).

raw_request(Port, Bytes) ->
    {ok, S} = gen_tcp:connect({127, 0, 0, 1}, Port, [binary, {active, false}, {packet, http_bin}]),
    ok = gen_tcp:send(S, Bytes),
    {ok, {http_response, _, Status, _}} = gen_tcp:recv(S, 0, 2000),
    gen_tcp:close(S),
    {Status, ok}.

%% Past metrics.max_agent_series agents the exposition lists the busiest and
%% adds the others up: its size does not grow with the agents.
bounded_series_test() ->
    with_env([{metrics, #{max_agent_series => 10}}],
             fun() ->
                     Agents = [begin
                                   Id = <<"a-", (integer_to_binary(I))/binary>>,
                                   ok = erlmcp_flow:register_agent(Id, erlmcp_flow_test_util:echo_agent(),
                                                                   [<<"c">>]),
                                   Id
                               end || I <- lists:seq(1, 300)],
                     %% one agent busier than the others: it is listed
                     Sticky = fun() -> erlmcp_flow:execute(#{}, #{capabilities => [<<"c">>],
                                                                  strategy => consistent_hash,
                                                                  sticky_key => <<"k">>})
                              end,
                     {ok, _, #{agent_id := Busy}} = Sticky(),
                     [{ok, _, #{agent_id := Busy}} = Sticky() || _ <- lists:seq(1, 4)],
                     {ok, _, Samples} = erlmcp_flow_test_prometheus:parse(
                                          iolist_to_binary(erlmcp_flow_prometheus:render())),
                     Tasks = [{maps:get(<<"agent">>, L), V}
                              || {<<"erlmcp_flow_agent_tasks_total">>, L, V} <- Samples],
                     ?assertEqual(10, length(Tasks)),
                     ?assert(lists:member({Busy, 5}, [{A, round(V)} || {A, V} <- Tasks])),
                     One = fun(Name) -> [V] = [V || {N, _, V} <- Samples, N =:= Name], round(V) end,
                     ?assertEqual(290, One(<<"erlmcp_flow_unlisted_agents">>)),
                     ?assertEqual(0, One(<<"erlmcp_flow_unlisted_agents_tasks_total">>)),
                     [ok = erlmcp_flow:unregister_agent(Id) || Id <- Agents]
             end).
