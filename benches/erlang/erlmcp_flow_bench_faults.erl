%% What real network faults do to a cluster (issue 30): four OTP peer nodes
%% on this machine whose links pass through erlmcp_flow_fault_link's relays
%% (latency and jitter in user space: this kernel has no netem) and an
%% nftables table of this bench's (real packet loss, a one-way partition, a
%% flapping link: dropped packets, real TCP retransmissions). Needs root and
%% nft.
%%
%%   make bench-faults                      (every scenario, the default settings)
%%   make bench-faults FAULTS_SECONDS=30    (each scenario's length, default 60)
%%
%% Each node holds 5 instant agents; the byzantine secret is set; the failure
%% detector runs with the application's defaults (heartbeat 1 s, phi 8, 10
%% samples). From the first node, all along each scenario: one caller runs
%% quorum tasks at F = 1 (3 votes), eight run execute/2 to any node. Per
%% scenario: suspicions (every node's detector, each peer it suspected,
%% counted), false ones per peer and hour where no node failed, quorum
%% latency p50/p99 and outcomes, tasks answered and failed (by reason).
%% Results also go to FAULTS_JSON (default _build/bench/faults.json).
-module(erlmcp_flow_bench_faults).

-export([main/0]).
%% on the peers
-export([start_agents/0, quorum_loop/2, load_loop/2, collect/1, suspicions/0]).

-define(CAP, <<"faults">>).
-define(SECRET, <<"bench-faults-secret-0123456789">>).
-define(TABLE, "erlmcp_flow_bench_faults").
-define(NODES, 4).

main() ->
    Secs = list_to_integer(os:getenv("FAULTS_SECONDS", "60")),
    Status = try
                 ok = nft_ready(),
                 Peers = [start_peer(I) || I <- lists:seq(1, ?NODES)],
                 try
                     Results = run(Peers, Secs),
                     Path = os:getenv("FAULTS_JSON", "_build/bench/faults.json"),
                     ok = filelib:ensure_dir(Path),
                     ok = file:write_file(Path, [erlmcp_flow_bench:json(Results), $\n]),
                     io:format("results written to ~s~n", [Path]),
                     0
                 after
                     nft_flush(),
                     [catch peer:stop(P) || {P, _} <- Peers]
                 end
             catch C:R:S -> io:format(standard_error, "faults failed: ~p:~p~n~p~n", [C, R, S]), 1
             end,
    erlang:halt(Status).

run(Peers, Secs) ->
    [{First, _} | _] = Peers,
    {PT, Target} = lists:last(Peers),
    %% the target opens its links itself: its relays carry all of them
    [true = peer:call(PT, net_kernel, connect_node, [N]) || {_, N} <- Peers, N =/= Target],
    [true = peer:call(P, net_kernel, connect_node, [O]) || {P, N} <- Peers, {_, O} <- Peers,
                                                         O > N, N =/= Target, O =/= Target],
    [ok = peer:call(P, ?MODULE, start_agents, []) || {P, _} <- Peers],
    erlmcp_flow_bench:poll(fun() -> length(peer:call(First, erlmcp_flow_registry, list_agents, [])) =:= 5 * ?NODES end,
                           120000),
    %% enough heartbeats for every detector to judge
    timer:sleep(12000),
    TargetPorts = [Port || {_, Port} <- peer:call(PT, erlmcp_flow_fault_link, ports, [])],
    AllPorts = lists:usort(lists:append([[Port || {_, Port} <- peer:call(P, erlmcp_flow_fault_link, ports, [])]
                                         || {P, _} <- Peers])),
    io:format("~n~b nodes on this machine, every link through a relay; faults on the links of ~s "
              "(relay ports ~w):~n", [?NODES, Target, TargetPorts]),
    Scenarios =
        [{baseline, "no fault", fun() -> ok end, fun() -> ok end},
         {latency, "50-200 ms one way on every link (50 ms + uniform jitter of 150 ms)",
          fun() -> [ok = peer:call(P, erlmcp_flow_fault_link, set, [O, #{delay_ms => 50, jitter_ms => 150}])
                    || {P, _} <- Peers, {_, O} <- Peers] end,
          fun() -> [ok = peer:call(P, erlmcp_flow_fault_link, set, [O, #{}]) || {P, _} <- Peers, {_, O} <- Peers]
          end},
         {loss, "5 % of packets dropped on every link, both ways",
          fun() -> nft(["add rule inet ", ?TABLE, " out tcp dport ", set(AllPorts), " numgen random mod 100 < 5 counter drop"]),
                   nft(["add rule inet ", ?TABLE, " out tcp sport ", set(AllPorts), " numgen random mod 100 < 5 counter drop"])
          end,
          fun() -> nft(["flush chain inet ", ?TABLE, " out"]) end},
         {one_way, "one-way partition: everything the last node sends is lost, for half the scenario",
          fun() -> nft(["add rule inet ", ?TABLE, " out tcp dport ", set(TargetPorts), " counter drop"]) end,
          fun() -> nft(["flush chain inet ", ?TABLE, " out"]) end},
         {flapping, "the last node's links down 5 s, up 5 s, over and over",
          fun() -> Flap = spawn_link(fun() -> flap(TargetPorts) end), put(flap, Flap), ok end,
          fun() -> unlink(get(flap)), exit(get(flap), kill), nft(["flush chain inet ", ?TABLE, " out"]) end}],
    Only = case os:getenv("FAULTS_ONLY") of
               false -> [N || {N, _, _, _} <- Scenarios];
               Names -> [list_to_atom(N) || N <- string:lexemes(Names, ",")]
           end,
    maps:from_list([{Name, scenario(Name, Text, Start, Stop, First, Peers, Secs)}
                    || {Name, Text, Start, Stop} <- Scenarios, lists:member(Name, Only)]).

scenario(Name, Text, Start, Stop, First, Peers, Secs) ->
    Before = lists:sum([peer:call(P, ?MODULE, suspicions, []) || {P, _} <- Peers]),
    Q = peer:call(First, ?MODULE, quorum_loop, [start, 1]),
    L = peer:call(First, ?MODULE, load_loop, [start, 8]),
    _ = Start(),
    receive after Secs * 500 -> ok end,
    Dropped0 = dropped(),
    %% the one-way partition heals halfway
    _ = Name =:= one_way andalso nft(["flush chain inet ", ?TABLE, " out"]),
    receive after Secs * 500 -> ok end,
    Dropped = case Name of
                  one_way -> Dropped0;
                  _ -> dropped()
              end,
    _ = Stop(),
    #{latencies := Lat, outcomes := QOut} = peer:call(First, ?MODULE, collect, [Q], 120000),
    #{ok := Ok, failed := Failed} = peer:call(First, ?MODULE, collect, [L], 120000),
    %% the links settle before the next scenario
    Settled = fun({P, _}) -> peer:call(P, erlmcp_flow_failure_detector, suspected, []) =:= [] end,
    erlmcp_flow_bench:poll(fun() -> lists:all(Settled, Peers) end, 120000),
    After = lists:sum([peer:call(P, ?MODULE, suspicions, []) || {P, _} <- Peers]),
    Suspicions = After - Before,
    PeerHours = ?NODES * (?NODES - 1) * Secs / 3600,
    Sorted = list_to_tuple(lists:sort(Lat)),
    N = tuple_size(Sorted),
    P = fun(Q1) when N > 0 -> element(max(1, ceil(N * Q1)), Sorted) / 1000; (_) -> 0.0 end,
    Reasons = maps:to_list(maps:groups_from_list(fun(R) -> R end, fun(_) -> 1 end, Failed)),
    io:format("  ~s (~s):~n    packets dropped ~b; suspicions ~b (~.1f per peer and hour); quorum tasks ~b, p50 ~.1f ms, "
              "p99 ~.1f ms, outcomes ~w; execute/2 ~b answered, ~b failed ~w~n",
              [Name, Text, Dropped, Suspicions, Suspicions / PeerHours, N, P(0.5), P(0.99),
               lists:sort(maps:to_list(QOut)), Ok, length(Failed),
               [{R, length(C)} || {R, C} <- Reasons]]),
    #{packets_dropped => Dropped, suspicions => Suspicions, suspicions_per_peer_hour => Suspicions / PeerHours,
      quorum_tasks => N, quorum_p50_ms => P(0.5), quorum_p99_ms => P(0.99),
      tasks_ok => Ok, tasks_failed => length(Failed), seconds => Secs}.

flap(Ports) ->
    nft(["add rule inet ", ?TABLE, " out tcp dport ", set(Ports), " counter drop"]),
    nft(["add rule inet ", ?TABLE, " out tcp sport ", set(Ports), " counter drop"]),
    timer:sleep(5000),
    nft(["flush chain inet ", ?TABLE, " out"]),
    timer:sleep(5000),
    flap(Ports).

%%--------------------------------------------------------------------
%% nftables
%%--------------------------------------------------------------------

nft_ready() ->
    case erlmcp_flow_fault_link:nft_table(?TABLE) of
        ok -> ok;
        error -> error("nft failed: this bench needs nftables (apt install nftables) and root")
    end.

nft_flush() ->
    erlmcp_flow_fault_link:nft_drop_table(?TABLE).

nft(Parts) ->
    erlmcp_flow_fault_link:nft(Parts).

%% Packets the table's rules dropped so far (the flapping link's rules are
%% flushed each time: what its last rules dropped).
dropped() ->
    Out = os:cmd("nft list table inet " ?TABLE),
    lists:sum([list_to_integer(N) || L <- string:lexemes(Out, "\n"),
                                     {match, [N]} <- [re:run(L, "packets ([0-9]+)", [{capture, all_but_first, list}])]]).

set(Ports) ->
    erlmcp_flow_fault_link:ports_set(Ports).

%%--------------------------------------------------------------------
%% Peers
%%--------------------------------------------------------------------

start_peer(I) ->
    Paths = lists:append([["-pa", P] || P <- code:get_path(), string:find(P, "_build") =/= nomatch]),
    {ok, Peer, Node} = peer:start(#{name => "faults" ++ integer_to_list(I) ++ "_" ++ os:getpid(),
                                    connection => standard_io,
                                    args => ["-setcookie", "erlmcp_flow_faults",
                                             "-epmd_module", "erlmcp_flow_fault_link" | Paths]}),
    ok = peer:call(Peer, logger, set_primary_config, [level, error]),
    ok = peer:call(Peer, application, load, [erlmcp_flow]),
    ok = peer:call(Peer, application, set_env, [erlmcp_flow, byzantine, #{hmac_secret => ?SECRET}]),
    {ok, _} = peer:call(Peer, application, ensure_all_started, [erlmcp_flow]),
    {Peer, Node}.

start_agents() ->
    [ok = erlmcp_flow:register_agent(iolist_to_binary([atom_to_list(node()), "/", integer_to_list(I)]),
                                     spawn(erlmcp_flow_bench_cluster, echo, []), [?CAP])
     || I <- lists:seq(1, 5)],
    ok.

%% On the first node: quorum tasks one after another until collected.
quorum_loop(start, Callers) ->
    Owner = self(),
    {quorum, [spawn(fun() -> quorum_loop(Owner, {[], #{}}) end) || _ <- lists:seq(1, Callers)]};
quorum_loop(Owner, {Lat, Out}) ->
    receive
        {collect, From} -> From ! {collected, self(), #{latencies => Lat, outcomes => Out}}
    after 0 ->
        T0 = erlang:monotonic_time(microsecond),
        R = erlmcp_flow:execute(#{}, #{capabilities => [?CAP], quorum => 1}),
        T = erlang:monotonic_time(microsecond) - T0,
        Kind = case R of
                   {ok, done, #{quorum := degraded}} -> degraded;
                   {ok, done, #{quorum := #{}}} -> decided;
                   {error, Reason} -> {error, element(1, term_key(Reason))};
                   _ -> other
               end,
        quorum_loop(Owner, {[T | Lat], maps:update_with(Kind, fun(C) -> C + 1 end, 1, Out)})
    end.

%% On the first node: execute/2 to any node from `Callers' processes.
load_loop(start, Callers) ->
    Owner = self(),
    {load, [spawn(fun() -> load_loop(Owner, {0, []}) end) || _ <- lists:seq(1, Callers)]};
load_loop(Owner, {Ok, Failed}) ->
    receive
        {collect, From} -> From ! {collected, self(), #{ok => Ok, failed => Failed}}
    after 0 ->
        case erlmcp_flow:execute(#{}, #{capabilities => [?CAP]}) of
            {ok, _, _} -> load_loop(Owner, {Ok + 1, Failed});
            {error, Reason} -> load_loop(Owner, {Ok, [element(1, term_key(Reason)) | Failed]})
        end
    end.

term_key(T) when is_tuple(T) -> T;
term_key(T) -> {T}.

collect({Kind, Pids}) ->
    [P ! {collect, self()} || P <- Pids],
    Parts = [receive {collected, P, R} -> R end || P <- Pids],
    case Kind of
        quorum -> #{latencies => lists:append([L || #{latencies := L} <- Parts]),
                    outcomes => lists:foldl(fun(#{outcomes := O}, Acc) ->
                                                    maps:fold(fun(K, V, A) -> maps:update_with(K, fun(X) -> X + V end, V, A) end, Acc, O)
                                            end, #{}, Parts)};
        load -> #{ok => lists:sum([O || #{ok := O} <- Parts]),
                  failed => lists:append([F || #{failed := F} <- Parts])}
    end.

%% On a peer: every peer's suspicions counted by this node's detector.
suspicions() ->
    lists:sum([S || #{suspicions := S} <- erlmcp_flow_failure_detector:peers()]).
