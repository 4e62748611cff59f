%% Real network faults between nodes on this machine, Jepsen-style: links
%% through erlmcp_flow_fault_link's relays (latency and jitter; this
%% kernel has no netem) and an nftables table of the suite's (packet loss,
%% a one-way partition, a flapping link: dropped packets, real TCP
%% retransmissions). Needs root and nft (`.ci/setup' installs nftables);
%% FLOW_TEST_SKIP=faults opts out.
%%
%% What each case asserts is behaviour: tasks answered, quorum tasks
%% decided, a node cut off one way suspected and then trusted again; the
%% figures (suspicions per hour, quorum p99) are `make bench-faults''s.
-module(erlmcp_flow_faults_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, end_per_testcase/2]).
-export([latency_and_loss/1, one_way_partition/1, flapping_link/1]).
%% on the peers
-export([start_agents/1, agent/0, run_tasks/2]).

-define(TABLE, "erlmcp_flow_faults_suite").
-define(CAP, <<"f">>).
-define(SECRET, <<"the-faults-suite-secret-0123456789">>).
-define(HEARTBEAT_MS, 200).

all() -> [latency_and_loss, one_way_partition, flapping_link].

init_per_suite(Config) ->
    Ready = fun() ->
                    os:find_executable("epmd") =/= false andalso os:find_executable("nft") =/= false
                        andalso erlmcp_flow_fault_link:nft_table(?TABLE) =:= ok
            end,
    case erlmcp_flow_test_util:require(faults, Ready,
                                       "nft (nftables) and root are needed to drop packets between "
                                       "nodes (.ci/setup installs nftables)") of
        {skip, _} = Skip -> Skip;
        ok -> Config
    end.

end_per_suite(_Config) ->
    ok = erlmcp_flow_fault_link:nft_drop_table(?TABLE),
    erlmcp_flow_cover_peers:stop().

end_per_testcase(_Case, _Config) ->
    _ = os:cmd("nft flush chain inet " ?TABLE " out 2>/dev/null"),
    ok.

%%--------------------------------------------------------------------
%% Cases
%%--------------------------------------------------------------------

%% Every link 20-60 ms one way, and 5 % of its packets dropped: every task
%% is answered, from every node's agents, and every quorum task decided.
latency_and_loss(_Config) ->
    Peers = start_cluster(3),
    [{PA, _} | _] = Peers,
    [ok = peer:call(P, erlmcp_flow_fault_link, set, [O, #{delay_ms => 20, jitter_ms => 40}])
     || {P, _} <- Peers, {_, O} <- Peers],
    Ports = relay_ports(Peers),
    nft(["add rule inet ", ?TABLE, " out tcp dport ", set(Ports), " numgen random mod 100 < 5 drop"]),
    nft(["add rule inet ", ?TABLE, " out tcp sport ", set(Ports), " numgen random mod 100 < 5 drop"]),
    Results = peer:call(PA, ?MODULE, run_tasks, [60, #{capabilities => [?CAP]}], 120000),
    ?assertEqual([], [R || R <- Results, element(1, R) =/= ok]),
    ?assertEqual(lists:sort([N || {_, N} <- Peers]), lists:usort([W || {ok, W, _} <- Results])),
    Quorum = peer:call(PA, ?MODULE, run_tasks, [10, #{capabilities => [?CAP], quorum => 1}], 120000),
    ?assertEqual(10, length([ok || {ok, _, #{quorum := _}} <- Quorum])),
    stop(Peers).

%% Everything one node sends is lost: the others suspect it and route
%% around it, no task fails; healed, it is trusted and routed to again. A
%% second cut, shorter than the first (1.5 s after 4 s), is seen too: the
%% first outage was not learned as one of the node's heartbeat intervals.
one_way_partition(_Config) ->
    Peers = start_cluster(3),
    [{PA, _}, _, {PT, T}] = Peers,
    Cut = ["add rule inet ", ?TABLE, " out tcp dport ", set(relay_ports([{PT, T}])), " drop"],
    T0 = erlang:monotonic_time(millisecond),
    nft(Cut),
    erlmcp_flow_test_util:await(
      fun() -> lists:member(T, peer:call(PA, erlmcp_flow_failure_detector, suspected, [])) end, 20000),
    Results = peer:call(PA, ?MODULE, run_tasks, [40, #{capabilities => [?CAP]}], 120000),
    ?assertEqual([], [R || R <- Results, element(1, R) =/= ok]),
    ?assertNot(lists:member(T, [W || {ok, W, _} <- Results])),
    timer:sleep(max(0, 4000 - (erlang:monotonic_time(millisecond) - T0))),
    nft(["flush chain inet ", ?TABLE, " out"]),
    erlmcp_flow_test_util:await(
      fun() -> not lists:member(T, peer:call(PA, erlmcp_flow_failure_detector, suspected, [])) end, 20000),
    erlmcp_flow_test_util:await(
      fun() ->
              After = peer:call(PA, ?MODULE, run_tasks, [30, #{capabilities => [?CAP]}], 120000),
              lists:member(T, [W || {ok, W, _} <- After])
      end, 20000),
    Seen = suspicions_of(PA, T),
    nft(Cut),
    timer:sleep(1500),
    nft(["flush chain inet ", ?TABLE, " out"]),
    ?assertEqual(Seen + 1, suspicions_of(PA, T)),
    stop(Peers).

suspicions_of(P, Node) ->
    [S] = [S || #{node := N, suspicions := S} <- peer:call(P, erlmcp_flow_failure_detector, peers, []),
                N =:= Node],
    S.

%% A node's links down for a second and up for a second, three times,
%% while tasks run from another node: none fails, and the node is
%% routable at the end.
flapping_link(_Config) ->
    Peers = start_cluster(3),
    [{PA, _}, _, {PT, T}] = Peers,
    Ports = set(relay_ports([{PT, T}])),
    Caller = self(),
    Runner = spawn_link(fun() ->
                                Caller ! {done, peer:call(PA, ?MODULE, run_tasks,
                                                          [400, #{capabilities => [?CAP]}], 300000)}
                        end),
    [begin
         nft(["add rule inet ", ?TABLE, " out tcp dport ", Ports, " drop"]),
         nft(["add rule inet ", ?TABLE, " out tcp sport ", Ports, " drop"]),
         timer:sleep(1000),
         nft(["flush chain inet ", ?TABLE, " out"]),
         timer:sleep(1000)
     end || _ <- lists:seq(1, 3)],
    Results = receive {done, R} -> R after 300000 -> error({no_answer, Runner}) end,
    ?assertEqual([], [X || X <- Results, element(1, X) =/= ok]),
    erlmcp_flow_test_util:await(
      fun() -> lists:member(T, peer:call(PA, erlmcp_flow, nodes, [])) end, 20000),
    stop(Peers).

%%--------------------------------------------------------------------
%% On the peers
%%--------------------------------------------------------------------

start_agents(N) ->
    [ok = erlmcp_flow:register_agent(iolist_to_binary([atom_to_list(node()), "/", integer_to_list(I)]),
                                     spawn(?MODULE, agent, []), [?CAP])
     || I <- lists:seq(1, N)],
    ok.

%% Answers the node it runs on.
agent() ->
    receive
        {execute_task, _Task, _Ctx, From, Ref} -> From ! {task_result, Ref, {ok, node()}}, agent();
        _ -> agent()
    end.

%% `N' tasks, ten at a time: each answer (`{ok, Node, Meta}' or the error).
run_tasks(N, Req) ->
    Self = self(),
    lists:append(
      [begin
           Pids = [spawn_link(fun() -> Self ! {task, self(), erlmcp_flow:execute(#{i => I}, Req)} end)
                   || I <- lists:seq(1, min(10, N - K))],
           [receive {task, P, A} -> A end || P <- Pids]
       end || K <- lists:seq(0, N - 1, 10)]).

%%--------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------

%% `K' nodes whose links the last one opens (its relays carry them all),
%% 3 agents each, every detector judging.
start_cluster(K) ->
    Peers = [start_peer(I) || I <- lists:seq(1, K)],
    {PT, T} = lists:last(Peers),
    [true = peer:call(PT, net_kernel, connect_node, [N]) || {_, N} <- Peers, N =/= T],
    Rest = lists:droplast(Peers),
    [true = peer:call(P, net_kernel, connect_node, [O]) || {P, N} <- Rest, {_, O} <- Rest, O > N],
    [ok = peer:call(P, ?MODULE, start_agents, [3]) || {P, _} <- Peers],
    [erlmcp_flow_test_util:await(
       fun() -> length(peer:call(P, erlmcp_flow_registry, list_agents, [])) =:= 3 * K end, 10000)
     || {P, _} <- Peers],
    %% enough heartbeats for the detectors (min_samples 5)
    [erlmcp_flow_test_util:await(
       fun() -> Ps = peer:call(P, erlmcp_flow_failure_detector, peers, []),
                length(Ps) =:= K - 1 andalso lists:all(fun(#{phi := Phi}) -> Phi > 0.0 end, Ps)
       end, 20000)
     || {P, _} <- Peers],
    Peers.

start_peer(I) ->
    Paths = [P || P <- code:get_path(), string:find(P, "_build") =/= nomatch],
    {ok, Peer, Node} =
        peer:start(#{name => "fault" ++ integer_to_list(I) ++ "_" ++ os:getpid(), connection => standard_io,
                     args => ["-setcookie", "erlmcp_flow_faults_suite",
                              "-epmd_module", "erlmcp_flow_fault_link",
                              "-kernel", "prevent_overlapping_partitions", "false"
                              | lists:append([["-pa", P] || P <- Paths])]}),
    _ = (ok =:= erlmcp_flow_cover_peers:attach(Node, erlmcp_flow_faults_suite)),
    ok = peer:call(Peer, logger, set_primary_config, [level, error]),
    ok = peer:call(Peer, application, load, [erlmcp_flow]),
    ok = peer:call(Peer, application, set_env,
                   [erlmcp_flow, failure_detector, #{heartbeat_interval => ?HEARTBEAT_MS, min_samples => 5}]),
    ok = peer:call(Peer, application, set_env, [erlmcp_flow, byzantine, #{hmac_secret => ?SECRET}]),
    {ok, _} = peer:call(Peer, application, ensure_all_started, [erlmcp_flow]),
    {Peer, Node}.

stop(Peers) ->
    ok = erlmcp_flow_cover_peers:detach([N || {_, N} <- Peers]),
    [catch peer:stop(P) || {P, _} <- Peers],
    ok.

relay_ports(Peers) ->
    lists:usort([Port || {P, _} <- Peers, {_, Port} <- peer:call(P, erlmcp_flow_fault_link, ports, [])]).

nft(Parts) ->
    erlmcp_flow_fault_link:nft(Parts).

set(Ports) ->
    erlmcp_flow_fault_link:ports_set(Ports).
