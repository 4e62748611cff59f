%% What a cluster of many nodes costs each node, in both ways of sharing
%% agents (issue 30): `mirror' (every node holds every agent of the
%% cluster) and `summary' (two-level routing: each node holds its own
%% agents and one summary per peer).
%%
%%   make bench-scale                       (8 nodes, then 16, 1 000 agents each, both modes)
%%   make bench-scale SCALE_NODES=4,8 SCALE_AGENTS=500 SCALE_MODES=summary
%%
%% Each size and mode in a fresh set of OTP peer nodes on this machine
%% (distributed Erlang over loopback, full mesh), the first node measured:
%% - registration: every node registers its agents at once (one process
%%   each); the time until every node sees all of them (mirror: in its
%%   table; summary: in the summaries it holds);
%% - memory of the first node per remote agent: its OS resident set, the
%%   BEAM's own memory (ETS, processes) and the Rust core's, before the
%%   others register and after;
%% - registration traffic: bytes the first node received over distribution
%%   while the others registered, per remote agent;
%% - a node joining late: the time until it sees every agent; a node
%%   stopped: the time until the first node routes to none of its agents;
%%   the first node cut off from every other and reconnected: the time
%%   until every node sees every agent again;
%% - routing to remote agents from the first node: execute/2 with 16
%%   callers and `node => any';
%% - churn (largest size only, SCALE_CHURN rounds, default 3): tasks run
%%   from the first node (16 callers) while, every round, a node is
%%   stopped and a new one joins with as many agents: the tasks that
%%   failed, and the time until the first node sees every agent again.
%% The results also go to SCALE_JSON (default _build/bench/scale.json).
-module(erlmcp_flow_bench_scale).

-export([main/0]).
%% on the peers
-export([register_agents/1, recv_bytes/0, seen/0, load/2]).

%% the cluster bench's capability: its throughput/3 routes to it
-define(CAP, <<"bench">>).

main() ->
    Sizes = [list_to_integer(S) || S <- string:lexemes(os:getenv("SCALE_NODES", "8,16"), ",")],
    Agents = list_to_integer(os:getenv("SCALE_AGENTS", "1000")),
    Modes = [list_to_atom(M) || M <- string:lexemes(os:getenv("SCALE_MODES", "mirror,summary"), ",")],
    Churn = list_to_integer(os:getenv("SCALE_CHURN", "3")),
    Largest = lists:max(Sizes),
    Status = try
                 Results = [{iolist_to_binary([atom_to_list(Mode), "_", integer_to_list(K)]),
                             one_size(K, Agents, Mode, case K of Largest -> Churn; _ -> 0 end)}
                            || K <- Sizes, Mode <- Modes],
                 Path = os:getenv("SCALE_JSON", "_build/bench/scale.json"),
                 ok = filelib:ensure_dir(Path),
                 ok = file:write_file(Path, [erlmcp_flow_bench:json(maps:from_list(Results)), $\n]),
                 io:format("results written to ~s~n", [Path]),
                 0
             catch C:R:S -> io:format(standard_error, "scale failed: ~p:~p~n~p~n", [C, R, S]), 1
             end,
    erlang:halt(Status).

one_size(K, Agents, Mode, Churn) ->
    Peers = [start_peer(Mode) || _ <- lists:seq(1, K)],
    try
        [true = peer:call(P, net_kernel, connect_node, [O]) || {P, N} <- Peers, {_, O} <- Peers, O > N],
        [{First, _} | Others] = Peers,
        ok = peer:call(First, ?MODULE, register_agents, [Agents], 120000),
        wait_agents(First, Agents, 60000),
        Before = measure(First),
        T0 = erlang:monotonic_time(millisecond),
        [spawn_link(fun() -> ok = peer:call(P, ?MODULE, register_agents, [Agents], 300000) end)
         || {P, _} <- Others],
        Total = K * Agents,
        [wait_agents(P, Total, 600000) || {P, _} <- Peers],
        Converged = erlang:monotonic_time(millisecond) - T0,
        After = measure(First),
        Remote = (K - 1) * Agents,
        Per = fun(Key) -> (maps:get(Key, After) - maps:get(Key, Before)) / Remote end,
        %% a node joining late, then one stopped
        {Late, _} = LatePeer = start_peer(Mode),
        TJ = erlang:monotonic_time(millisecond),
        [true = peer:call(Late, net_kernel, connect_node, [N]) || {_, N} <- Peers],
        wait_agents(Late, Total, 600000),
        Join = erlang:monotonic_time(millisecond) - TJ,
        {Gone, _} = lists:last(Others),
        TL = erlang:monotonic_time(millisecond),
        peer:stop(Gone),
        wait_agents(First, Total - Agents, 600000, exactly),
        Loss = erlang:monotonic_time(millisecond) - TL,
        catch peer:stop(element(1, LatePeer)),
        %% the first node cut off from every other, then healed
        Left = lists:droplast(Others),
        FirstNode = peer:call(First, erlang, node, []),
        [true = peer:call(First, erlang, disconnect_node, [N]) || {_, N} <- Left],
        wait_agents(First, Agents, 600000, exactly),
        TH = erlang:monotonic_time(millisecond),
        [true = peer:call(First, net_kernel, connect_node, [N]) || {_, N} <- Left],
        Healed = Total - Agents,
        [wait_agents(P, Healed, 600000, exactly) || {P, _} <- [{First, FirstNode} | Left]],
        Heal = erlang:monotonic_time(millisecond) - TH,
        Rate = peer:call(First, erlmcp_flow_bench_cluster, throughput, [16, 500, any], 300000),
        io:format("~n~b nodes x ~b agents, cluster.mode = ~s (peer nodes on this machine, full mesh), "
                  "seen from the first:~n", [K, Agents, Mode]),
        io:format("  registration at once on every node: all ~b agents seen everywhere after ~b ms~n",
                  [Total, Converged]),
        io:format("  memory per remote agent: RSS ~b B, BEAM ~b B (ETS ~b, processes ~b), "
                  "core ~b B~n",
                  [round(Per(rss)), round(Per(erlang_total)), round(Per(ets)), round(Per(processes)),
                   round(Per(core))]),
        _ = Mode =:= summary andalso
            io:format("  id directory on the first node: ~b ids, ~b B each~n",
                      [maps:get(ids, After), maps:get(ids_bytes, After) div max(1, maps:get(ids, After))]),
        io:format("  registration traffic into the first node: ~.1f bytes per remote agent "
                  "(~.3f MB for ~b)~n",
                  [Per(recv_bytes), (maps:get(recv_bytes, After) - maps:get(recv_bytes, Before)) / 1.0e6,
                   Remote]),
        io:format("  a node joining late sees every agent after ~b ms; a node stopped is out of "
                  "the first node's routing after ~b ms; the first node cut off from all and "
                  "reconnected: every node sees every agent again after ~b ms~n", [Join, Loss, Heal]),
        io:format("  execute/2 from the first node, 16 callers, node => any: ~b/s (~b% remote)~n",
                  [round(maps:get(rate, Rate)), round(100 * maps:get(remote_share, Rate))]),
        Churned = churn(Churn, First, lists:droplast(Others), Mode, Agents, Total - Agents),
        maps:merge(#{nodes => K, agents_per_node => Agents, mode => Mode, converged_ms => Converged,
                     rss_per_remote_agent => Per(rss), beam_per_remote_agent => Per(erlang_total),
                     ets_per_remote_agent => Per(ets), processes_per_remote_agent => Per(processes),
                     core_per_remote_agent => Per(core), recv_bytes_per_remote_agent => Per(recv_bytes),
                     join_ms => Join, loss_ms => Loss, heal_ms => Heal,
                     remote_rate => maps:get(rate, Rate),
                     remote_share => maps:get(remote_share, Rate)},
                   Churned)
    after
        [catch peer:stop(P) || {P, _} <- Peers]
    end.

%% Rounds of a node leaving and a new one joining while tasks run from the
%% first node.
churn(0, _First, _Others, _Mode, _Agents, _Total) ->
    #{};
churn(Rounds, First, Others, Mode, Agents, Total) ->
    Load = peer:call(First, ?MODULE, load, [start, 16]),
    {Times, Started} =
        lists:foldl(fun(_, {Ts, [{Gone, _} | Rest]}) ->
                            T0 = erlang:monotonic_time(millisecond),
                            peer:stop(Gone),
                            wait_agents(First, Total - Agents, 600000, exactly),
                            {New, _} = NewPeer = start_peer(Mode),
                            [true = peer:call(New, net_kernel, connect_node, [N])
                             || {_, N} <- [{First, peer:call(First, erlang, node, [])} | Rest]],
                            ok = peer:call(New, ?MODULE, register_agents, [Agents], 120000),
                            wait_agents(First, Total, 600000, exactly),
                            {[erlang:monotonic_time(millisecond) - T0 | Ts], Rest ++ [NewPeer]}
                    end, {[], Others}, lists:seq(1, Rounds)),
    #{ok := Ok, failed := Failed} = peer:call(First, ?MODULE, load, [{stop, Load}, 16], 120000),
    io:format("  churn: ~b rounds of a node stopped and a new one joining while 16 callers run tasks "
              "from the first: ~b answered, ~b failed ~p; every agent seen again after ~w ms~n",
              [Rounds, Ok, length(Failed), lists:usort(Failed), lists:reverse(Times)]),
    [catch peer:stop(P) || {P, _} <- Started, P =/= First],
    #{churn_rounds => Rounds, churn_ok => Ok, churn_failed => length(Failed),
      churn_rejoin_ms => lists:reverse(Times)}.

start_peer(Mode) ->
    Paths = lists:append([["-pa", P] || P <- code:get_path(), string:find(P, "_build") =/= nomatch]),
    {ok, Peer, Node} = peer:start(#{name => peer:random_name("scale"), connection => standard_io,
                                    args => ["-setcookie", "erlmcp_flow_scale",
                                             %% a cut link stays cut until it is healed
                                             "-kernel", "dist_auto_connect", "once",
                                             "-kernel", "prevent_overlapping_partitions", "false"
                                             | Paths]}),
    ok = peer:call(Peer, logger, set_primary_config, [level, error]),
    ok = peer:call(Peer, application, load, [erlmcp_flow]),
    ok = peer:call(Peer, application, set_env, [erlmcp_flow, cluster, #{mode => Mode}]),
    {ok, _} = peer:call(Peer, application, ensure_all_started, [erlmcp_flow]),
    {Peer, Node}.

%% On a peer: `N' agents of this node (ids `Node/J', as the cluster bench
%% names them: its throughput tells remote ones by that), registered by one
%% process that stays.
register_agents(N) ->
    Self = self(),
    spawn(fun() ->
                  [ok = erlmcp_flow:register_agent(iolist_to_binary(io_lib:format("~s/~b", [node(), J])),
                                                   spawn(erlmcp_flow_bench_cluster, echo, []),
                                                   [?CAP])
                   || J <- lists:seq(1, N)],
                  Self ! registered,
                  receive stop -> ok end
          end),
    receive registered -> ok end.

wait_agents(Peer, N, Ms) ->
    wait_agents(Peer, N, Ms, at_least).

wait_agents(Peer, N, Ms, How) ->
    Deadline = erlang:monotonic_time(millisecond) + Ms,
    wait_agents1(Peer, N, Deadline, How).

wait_agents1(Peer, N, Deadline, How) ->
    Have = peer:call(Peer, ?MODULE, seen, [], 60000),
    Done = case How of
               at_least -> Have >= N;
               exactly -> Have =:= N
           end,
    case Done of
        true ->
            ok;
        false ->
            erlang:monotonic_time(millisecond) < Deadline orelse error({agents, Have, N}),
            timer:sleep(20),
            wait_agents1(Peer, N, Deadline, How)
    end.

measure(Peer) ->
    _ = peer:call(Peer, erlang, garbage_collect, []),
    [peer:call(Peer, erlang, garbage_collect, [P]) || P <- peer:call(Peer, erlang, processes, [])],
    timer:sleep(300),
    Mem = peer:call(Peer, erlang, memory, []),
    #{rss => peer:call(Peer, erlmcp_flow_bench, rss, []),
      erlang_total => proplists:get_value(total, Mem),
      ets => proplists:get_value(ets, Mem),
      processes => proplists:get_value(processes, Mem),
      core => peer:call(Peer, erlmcp_flow_nif, core_memory, []),
      recv_bytes => peer:call(Peer, ?MODULE, recv_bytes, []),
      ids => peer:call(Peer, erlmcp_flow_cluster_ids, size, []),
      ids_bytes => peer:call(Peer, erlmcp_flow_cluster_ids, memory, [])}.

%% On a peer: the agents it routes to: in its table (mirror), or in the
%% summaries it holds (summary).
seen() ->
    case erlmcp_flow_cluster:mode() of
        mirror -> maps:get(agents, erlmcp_flow:stats());
        summary -> lists:sum([A || #{agents := A} <- maps:values(erlmcp_flow_cluster:summaries())])
    end.

%% On a peer: `Callers' processes running tasks until stopped; their
%% answers counted and failures kept.
load(start, Callers) ->
    Owner = self(),
    [spawn(fun() -> load_loop(Owner, 0, []) end) || _ <- lists:seq(1, Callers)];
load({stop, Pids}, _Callers) ->
    [P ! {stop, self()} || P <- Pids],
    Done = [receive {load_done, P, Ok, Failed} -> {Ok, Failed} end || P <- Pids],
    #{ok => lists:sum([Ok || {Ok, _} <- Done]), failed => lists:append([F || {_, F} <- Done])}.

load_loop(Owner, Ok, Failed) ->
    receive
        {stop, From} -> From ! {load_done, self(), Ok, Failed}
    after 0 ->
        case erlmcp_flow:execute(#{}, #{capabilities => [?CAP]}) of
            {ok, _, _} -> load_loop(Owner, Ok + 1, Failed);
            {error, Reason} -> load_loop(Owner, Ok, [Reason | Failed])
        end
    end.

%% On a peer: bytes received over every distribution connection so far.
recv_bytes() ->
    lists:sum([case inet:getstat(Ctrl, [recv_oct]) of
                   {ok, [{recv_oct, B}]} -> B;
                   _ -> 0
               end || {_Node, Ctrl} <- erlang:system_info(dist_ctrl), is_port(Ctrl)]).
