%% Cluster figures (BENCH_ONLY=cluster make bench-erlang): three nodes on
%% this machine (OTP's peer, distributed Erlang over loopback), 20 instant
%% agents on each. From the first node: the latency of quorum tasks at
%% F = 1 (3 agents on 3 nodes, votes signed and verified), one at a time;
%% and routing throughput with 16 callers to this node's agents only
%% (`node => local') and to every node's (two thirds remote), in the same
%% run.
-module(erlmcp_flow_bench_cluster).

-export([figures/0]).
%% on the peers
-export([start_agents/1, echo/0, quorum_latency/1, throughput/3]).

-define(SECRET, <<"bench-cluster-secret-0123456789">>).
-define(CAP, <<"bench">>).

figures() ->
    Paths = lists:append([["-pa", P] || P <- code:get_path(), string:find(P, "_build") =/= nomatch]),
    Peers = [begin
                 {ok, Peer, Node} = peer:start(#{name => peer:random_name("bench"),
                                                 connection => standard_io,
                                                 args => ["-setcookie", "erlmcp_flow_bench" | Paths]}),
                 ok = peer:call(Peer, logger, set_primary_config, [level, error]),
                 ok = peer:call(Peer, application, load, [erlmcp_flow]),
                 ok = peer:call(Peer, application, set_env,
                                [erlmcp_flow, byzantine, #{hmac_secret => ?SECRET}]),
                 {ok, _} = peer:call(Peer, application, ensure_all_started, [erlmcp_flow]),
                 {Peer, Node}
             end || _ <- lists:seq(1, 3)],
    try
        [true = peer:call(P, net_kernel, connect_node, [O]) || {P, N} <- Peers, {_, O} <- Peers, O > N],
        [ok = peer:call(P, ?MODULE, start_agents, [N]) || {P, N} <- Peers],
        [{PA, _} | _] = Peers,
        erlmcp_flow_bench:poll(fun() -> length(peer:call(PA, erlmcp_flow_registry, list_agents, [])) =:= 60 end,
                               10000),
        Quorum = peer:call(PA, ?MODULE, quorum_latency, [2000], 120000),
        Local = peer:call(PA, ?MODULE, throughput, [16, 2000, local], 120000),
        Any = peer:call(PA, ?MODULE, throughput, [16, 2000, any], 120000),
        Local2 = peer:call(PA, ?MODULE, throughput, [16, 2000, local], 120000),
        Any2 = peer:call(PA, ?MODULE, throughput, [16, 2000, any], 120000),
        io:format("~ncluster: 3 nodes on loopback (peer), 20 instant agents each, "
                  "from the first node:~n"),
        io:format("  quorum task, F = 1 (3 votes on 3 nodes), 1 caller: mean ~.1f us, "
                  "p50 ~.1f us, p99 ~.1f us (floor: p99 under 50 ms)~n",
                  [maps:get(mean_us, Quorum), maps:get(p50_us, Quorum), maps:get(p99_us, Quorum)]),
        io:format("  execute/2, 16 callers, node => local (20 agents): ~b/s, then ~b/s~n",
                  [round(maps:get(rate, Local)), round(maps:get(rate, Local2))]),
        io:format("  execute/2, 16 callers, any node (60 agents, 40 remote): ~b/s, then ~b/s "
                  "(~b% remote)~n",
                  [round(maps:get(rate, Any)), round(maps:get(rate, Any2)),
                   round(100 * maps:get(remote_share, Any))]),
        #{quorum_f1 => Quorum, local => [Local, Local2], any => [Any, Any2]}
    after
        [catch peer:stop(P) || {P, _} <- Peers]
    end.

start_agents(Node) ->
    [ok = erlmcp_flow:register_agent(iolist_to_binary(io_lib:format("~s/~b", [Node, I])),
                                     spawn(?MODULE, echo, []), [?CAP])
     || I <- lists:seq(1, 20)],
    ok.

echo() ->
    receive
        {execute_task, _Task, _Ctx, From, Ref} -> From ! {task_result, Ref, {ok, done}}, echo();
        _ -> echo()
    end.

quorum_latency(N) ->
    Times = [begin
                 T0 = erlang:monotonic_time(microsecond),
                 {ok, done, #{quorum := #{agreeing := _}}} =
                     erlmcp_flow:execute(#{n => I}, #{capabilities => [?CAP], quorum => 1}),
                 erlang:monotonic_time(microsecond) - T0
             end || I <- lists:seq(1, N)],
    T = list_to_tuple(lists:sort(Times)),
    #{mean_us => lists:sum(Times) / N, p50_us => float(element(N div 2, T)),
      p99_us => float(element(N * 99 div 100, T))}.

throughput(Callers, Each, Where) ->
    Self = self(),
    T0 = erlang:monotonic_time(microsecond),
    Pids = [spawn_link(fun() ->
                               Remote = lists:foldl(
                                          fun(I, Acc) ->
                                                  {ok, done, #{agent_id := Id}} =
                                                      erlmcp_flow:execute(#{n => I},
                                                                          #{capabilities => [?CAP],
                                                                            node => Where}),
                                                  case binary:match(Id, atom_to_binary(node())) of
                                                      nomatch -> Acc + 1;
                                                      _ -> Acc
                                                  end
                                          end, 0, lists:seq(1, Each)),
                               Self ! {done, self(), Remote}
                       end) || _ <- lists:seq(1, Callers)],
    Remote = lists:sum([receive {done, P, R} -> R end || P <- Pids]),
    Secs = (erlang:monotonic_time(microsecond) - T0) / 1.0e6,
    #{rate => Callers * Each / Secs, remote_share => Remote / (Callers * Each)}.
