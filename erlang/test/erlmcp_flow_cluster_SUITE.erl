%% Several nodes on this machine, started with OTP's `peer' (controlled over
%% their standard input and output, so the test node stays out of their
%% cluster): agents shared through the `pg' scope, routing to remote agents,
%% a partition and its heal, and the failure detector seeing a silent node
%% whose link is still up.
-module(erlmcp_flow_cluster_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1, init_per_testcase/2, end_per_testcase/2]).
-export([shared_agents/1, remote_death_is_retried/1, partition_and_heal/1,
         suspended_heartbeats/1, byzantine_quorum/1, rolling_upgrade/1, tls_distribution/1]).
%% run on the peers
-export([start_agents/2, start_agents/3, agent/2, agent/3, route_many/3, route_one/2, sees/0, started/1,
         start_replayer/0, replayer/1, start_load/3, load_loop/4, stop_load/1]).
%% the peers' helpers, which erlmcp_flow_cluster_summary_SUITE uses too
-export([start_peers/2, connect_all/1, stop_peers/1, ids/2, wait_until/2]).

-define(CAP, <<"work">>).
-define(HEARTBEAT_MS, 200).

all() -> [shared_agents, remote_death_is_retried, partition_and_heal, suspended_heartbeats,
          byzantine_quorum, rolling_upgrade, tls_distribution].

-define(COOKIE, erlmcp_flow_cluster_suite).
-define(SECRET, <<"the-cluster-secret-of-the-suite">>).

init_per_suite(Config) ->
    case erlmcp_flow_test_util:require(epmd, fun() -> os:find_executable("epmd") =/= false end,
                                       "epmd is not installed: no distributed Erlang here") of
        {skip, _} = Skip -> Skip;
        ok -> Config
    end.

end_per_suite(_Config) ->
    erlmcp_flow_cover_peers:stop().

init_per_testcase(_Case, Config) ->
    Config.

%% A case stops its peers itself (their counts go to cover first); a case
%% that fails takes them down with it (peer nodes stop with the process
%% that started them).
end_per_testcase(_Case, _Config) ->
    ok.

%%--------------------------------------------------------------------
%% Cases
%%--------------------------------------------------------------------

%% Three nodes share their agents; a fourth joins later and receives every
%% one. Tasks from every node reach agents of every node; find_agent,
%% query_agents and find_agents_by_capability include remote agents;
%% `node => local' keeps a task on its node; a taken id is taken
%% cluster-wide.
shared_agents(_Config) ->
    Peers = start_peers(3),
    connect_all(Peers),
    [ok = peer:call(P, ?MODULE, start_agents, [ids(N, 3), ?CAP]) || {P, N} <- Peers],
    All = lists:sort(lists:append([ids(N, 3) || {_, N} <- Peers])),
    T0 = erlang:monotonic_time(millisecond),
    [wait_sees(P, All) || {P, _} <- Peers],
    ct:log("9 agents on 3 nodes seen everywhere after ~b ms", [erlang:monotonic_time(millisecond) - T0]),
    Nodes = lists:sort([N || {_, N} <- Peers]),
    [?assertEqual(Nodes, peer:call(P, erlmcp_flow, nodes, [])) || {P, _} <- Peers],
    %% tasks from each node reach agents of every node
    [begin
         Results = peer:call(P, ?MODULE, route_many, [60, #{capabilities => [?CAP]}, #{}]),
         ?assertEqual(60, length([ok || {ok, _, _} <- Results])),
         Served = lists:usort([Where || {ok, {Where, _}, _} <- Results]),
         ?assertEqual(Nodes, Served)
     end || {P, _} <- Peers],
    %% node => local: this node's agents only
    [begin
         Local = peer:call(P, ?MODULE, route_many, [30, #{capabilities => [?CAP], node => local}, #{}]),
         ?assertEqual([N], lists:usort([Where || {ok, {Where, _}, _} <- Local]))
     end || {P, N} <- Peers],
    {PA, A} = hd(Peers),
    {PB, B} = lists:nth(2, Peers),
    [RemoteId | _] = ids(B, 3),
    {ok, RemotePid} = peer:call(PA, erlmcp_flow, find_agent, [RemoteId]),
    ?assertEqual(B, node(RemotePid)),
    ?assertEqual(All, peer:call(PA, erlmcp_flow, query_agents, [[?CAP]])),
    ?assertEqual(9, length(peer:call(PA, erlmcp_flow, find_agents_by_capability, [?CAP]))),
    %% ids are unique across the cluster
    ?assertEqual({error, already_registered},
                 peer:call(PA, erlang, apply, [fun erlmcp_flow:register_agent/3,
                                               [RemoteId, peer:call(PA, erlang, whereis, [init]), [?CAP]]])),
    %% unregistered on its node: gone everywhere
    ok = peer:call(PB, erlmcp_flow, unregister_agent, [RemoteId]),
    Left0 = All -- [RemoteId],
    [wait_sees(P, Left0) || {P, _} <- Peers],
    %% unregistered from another node: its own node's registry removes it,
    %% and so every node's view
    [_, OtherId | _] = ids(B, 3),
    ok = peer:call(PA, erlmcp_flow, unregister_agent, [OtherId]),
    Left = Left0 -- [OtherId],
    [wait_sees(P, Left) || {P, _} <- Peers],
    ?assertEqual({error, not_found}, peer:call(PB, erlmcp_flow, find_agent, [OtherId])),
    %% a node that joins now receives every agent, and its own are seen
    [{PD, D}] = start_peers(1),
    connect_all([{PD, D} | Peers]),
    ok = peer:call(PD, ?MODULE, start_agents, [ids(D, 3), ?CAP]),
    All2 = lists:sort(Left ++ ids(D, 3)),
    [wait_sees(P, All2) || {P, _} <- [{PD, D} | Peers]],
    ?assertEqual(lists:sort([D | Nodes]), peer:call(PA, erlmcp_flow, nodes, [])),
    _ = A,
    stop_peers([{PD, D} | Peers]).

%% A remote agent that dies mid-task fails its attempt as a local one does
%% and the task is retried elsewhere; a node that goes away takes its agents
%% out of routing, and its tasks in flight are retried.
remote_death_is_retried(_Config) ->
    Peers = start_peers(3),
    connect_all(Peers),
    [{PA, A}, {PB, B}, {PC, C}] = Peers,
    ok = peer:call(PA, ?MODULE, start_agents, [ids(A, 1), ?CAP]),
    ok = peer:call(PB, ?MODULE, start_agents, [[<<"slow-b">>], <<"slow">>]),
    ok = peer:call(PC, ?MODULE, start_agents, [[<<"slow-c">>], <<"slow">>]),
    [wait_sees(P, lists:sort(ids(A, 1) ++ [<<"slow-b">>, <<"slow-c">>])) || {P, _} <- Peers],
    %% a task to B's slow agent, which is killed while it works
    Caller = self(),
    Async = fun(Req) ->
                    spawn_link(fun() ->
                                       Caller ! {answer, self(),
                                                 peer:call(PA, ?MODULE, route_one,
                                                           [#{sleep => 1000}, Req], 30000)}
                               end)
            end,
    W1 = Async(#{capabilities => [<<"slow">>], strategy => round_robin}),
    W2 = Async(#{capabilities => [<<"slow">>], strategy => round_robin}),
    %% round robin sends one to each: B's agent is working on its task
    wait_until(fun() -> peer:call(PB, ?MODULE, started, [<<"slow-b">>]) >= 1 end, 10000),
    %% B goes away (its node stops): A sees noconnection, retries on C
    stop_peers([{PB, B}]),
    Answers = [receive {answer, W, Ans} -> Ans after 30000 -> error(no_answer) end || W <- [W1, W2]],
    ct:log("answers after B went away: ~p", [Answers]),
    ?assertEqual([ok, ok], [element(1, X) || X <- Answers]),
    ?assertEqual([C, C], [element(1, element(2, X)) || X <- Answers]),
    %% the retry really happened: the task B held answered on its second
    %% attempt, B's agent named in `tried' as down; the other on its first
    Metas = lists:sort([{maps:get(attempts, M), maps:get(tried, M)} || {ok, _, M} <- Answers]),
    ?assertMatch([{1, []}, {2, [#{agent_id := <<"slow-b">>, reason := {agent_down, _}}]}], Metas),
    wait_sees(PA, lists:sort(ids(A, 1) ++ [<<"slow-c">>])),
    ?assertNot(lists:member(B, peer:call(PA, erlmcp_flow, nodes, []))),
    ?assert(lists:member(B, peer:call(PA, erlmcp_flow_byzantine_detector, detect_partitions, []))),
    stop_peers(lists:keydelete(PB, 1, Peers)),
    ok.

%% Four nodes split 2-2: each side keeps answering every task with its own
%% agents; both sides register the same id meanwhile. After the heal every
%% node sees every agent again, the id held by one agent (the smaller node
%% name's), never two.
partition_and_heal(_Config) ->
    Peers = start_peers(4),
    connect_all(Peers),
    [ok = peer:call(P, ?MODULE, start_agents, [ids(N, 3), ?CAP]) || {P, N} <- Peers],
    All = lists:sort(lists:append([ids(N, 3) || {_, N} <- Peers])),
    [wait_sees(P, All) || {P, _} <- Peers],
    [{PA, A}, {PB, B}, {PC, C}, {PD, D}] = Peers,
    %% a task of A's on C's slow agent when the split comes: it is retried
    %% on A's side
    %% (C's agent is the only one when the task starts; B's comes after)
    ok = peer:call(PC, ?MODULE, start_agents, [[<<"slow-c">>], <<"slow">>]),
    [wait_sees(P, lists:sort([<<"slow-c">> | All])) || {P, _} <- Peers],
    Caller = self(),
    InFlight = spawn_link(fun() ->
                                  Caller ! {in_flight, peer:call(PA, ?MODULE, route_one,
                                                                 [#{sleep => 500},
                                                                  #{capabilities => [<<"slow">>]}],
                                                                 30000)}
                          end),
    wait_until(fun() -> peer:call(PC, ?MODULE, started, [<<"slow-c">>]) >= 1 end, 10000),
    ok = peer:call(PB, ?MODULE, start_agents, [[<<"slow-b">>], <<"slow">>]),
    [wait_sees(P, lists:sort([<<"slow-b">>, <<"slow-c">> | All])) || {P, _} <- Peers],
    %% the split: A and B on one side, C and D on the other
    [true = peer:call(P, erlang, disconnect_node, [Other]) || {P, _} <- [{PA, A}, {PB, B}],
                                                              Other <- [C, D]],
    Retried = receive {in_flight, R} -> R after 30000 -> error({no_answer, InFlight}) end,
    ct:log("the task in flight across the split: ~p", [Retried]),
    ?assertMatch({ok, {B, <<"slow-b">>}, #{attempts := 2,
                                          tried := [#{agent_id := <<"slow-c">>,
                                                      reason := {agent_down, noconnection}}]}},
                 Retried),
    ok = peer:call(PB, erlmcp_flow, unregister_agent, [<<"slow-b">>]),
    ok = peer:call(PC, erlmcp_flow, unregister_agent, [<<"slow-c">>]),
    Side1 = lists:sort(ids(A, 3) ++ ids(B, 3)),
    Side2 = lists:sort(ids(C, 3) ++ ids(D, 3)),
    [wait_sees(P, Side1) || P <- [PA, PB]],
    [wait_sees(P, Side2) || P <- [PC, PD]],
    ?assertEqual(lists:sort([C, D]), peer:call(PA, erlmcp_flow_byzantine_detector, detect_partitions, [])),
    %% each side routes every task it is given to its own agents
    [begin
         Results = peer:call(P, ?MODULE, route_many, [200, #{capabilities => [?CAP]}, #{}], 60000),
         ?assertEqual(200, length(Results)),
         Ok = [R || {ok, _, _} = R <- Results],
         ?assert(length(Ok) >= 198),
         ?assertEqual(lists:sort(Side), lists:usort([Where || {ok, {Where, _}, _} <- Ok]))
     end || {P, Side} <- [{PA, [A, B]}, {PB, [A, B]}, {PC, [C, D]}, {PD, [C, D]}]],
    %% both sides take the same id
    ok = peer:call(PA, ?MODULE, start_agents, [[<<"twin">>], <<"twin">>]),
    ok = peer:call(PC, ?MODULE, start_agents, [[<<"twin">>], <<"twin">>]),
    [wait_sees(P, lists:sort([<<"twin">> | Side1])) || P <- [PA, PB]],
    [wait_sees(P, lists:sort([<<"twin">> | Side2])) || P <- [PC, PD]],
    %% the heal
    T0 = erlang:monotonic_time(millisecond),
    [true = peer:call(P, net_kernel, connect_node, [Other]) || P <- [PA, PB], Other <- [C, D]],
    Everything = lists:sort([<<"twin">> | All]),
    [wait_sees(P, Everything) || {P, _} <- Peers],
    ct:log("every node sees every agent ~b ms after the heal", [erlang:monotonic_time(millisecond) - T0]),
    Winner = min(A, C),
    [begin
         {ok, Pid} = peer:call(P, erlmcp_flow, find_agent, [<<"twin">>]),
         ?assertEqual(Winner, node(Pid)),
         ?assertEqual(13, length(peer:call(P, erlmcp_flow_registry, list_agents, []))),
         %% tasks for the twin reach the one that kept the id
         Twins = peer:call(P, ?MODULE, route_many, [10, #{capabilities => [<<"twin">>]}, #{}]),
         ?assertEqual([{Winner, <<"twin">>}], lists:usort([R || {ok, R, _} <- Twins]))
     end || {P, _} <- Peers],
    [?assertEqual([], peer:call(P, erlmcp_flow_byzantine_detector, detect_partitions, []))
     || {P, _} <- Peers],
    stop_peers(Peers),
    ok.

%% A node whose detector stops sending heartbeats (suspended) leaves
%% routing on the others while its link is up, and comes back when it
%% resumes.
suspended_heartbeats(_Config) ->
    Peers = start_peers(3),
    connect_all(Peers),
    [ok = peer:call(P, ?MODULE, start_agents, [ids(N, 2), ?CAP]) || {P, N} <- Peers],
    All = lists:sort(lists:append([ids(N, 2) || {_, N} <- Peers])),
    [wait_sees(P, All) || {P, _} <- Peers],
    [{PA, _A}, {PB, _B}, {PC, C}] = Peers,
    %% enough heartbeats for the detector to judge (min_samples)
    wait_until(fun() -> peer:call(PA, erlmcp_flow_failure_detector, peers, []) =/= [] andalso
                            lists:all(fun(#{phi := Phi}) -> Phi > 0.0 end,
                                      peer:call(PA, erlmcp_flow_failure_detector, peers, [])) end,
               10000),
    ok = peer:call(PC, sys, suspend, [erlmcp_flow_failure_detector]),
    T0 = erlang:monotonic_time(millisecond),
    Others = lists:sort(All -- ids(C, 2)),
    wait_sees(PA, Others, 10000),
    Took = erlang:monotonic_time(millisecond) - T0,
    ct:log("C's agents left A's routing ~b ms after its detector was suspended "
           "(heartbeat every ~b ms)", [Took, ?HEARTBEAT_MS]),
    ?assertEqual([C], peer:call(PA, erlmcp_flow_failure_detector, suspected, [])),
    ?assert(peer:call(PA, erlmcp_flow_failure_detector, phi, [C]) > 8.0),
    %% the link is still up: distributed Erlang has not noticed anything
    ?assert(lists:member(C, peer:call(PA, erlang, nodes, []))),
    ?assertEqual([C], peer:call(PA, erlmcp_flow_byzantine_detector, detect_partitions, [])),
    Results = peer:call(PA, ?MODULE, route_many, [50, #{capabilities => [?CAP]}, #{}]),
    ?assertNot(lists:member(C, [Where || {ok, {Where, _}, _} <- Results])),
    %% heartbeats again: trusted, its agents back
    ok = peer:call(PC, sys, resume, [erlmcp_flow_failure_detector]),
    wait_sees(PA, All, 10000),
    ?assertEqual([], peer:call(PA, erlmcp_flow_failure_detector, suspected, [])),
    [?assertEqual([], peer:call(P, erlmcp_flow_failure_detector, suspected, [])) || P <- [PB]],
    stop_peers(Peers),
    ok.

%% Four nodes, quorum tasks at F = 3 (7 agents): the caller's node has 4
%% honest agents; one node's agent answers wrong values; one node runs with
%% another secret (its votes fail verification); one node replays an old
%% signed vote for every new task. Every task gets the honest value, once;
%% the liar agent and the two nodes are blacklisted.
byzantine_quorum(_Config) ->
    Byz = fun(Secret) -> [{byzantine, #{hmac_secret => Secret, vote_timeout => 3000}}] end,
    [{P1, N1}] = start_peers(1, Byz(?SECRET)),
    [{P2, N2}] = start_peers(1, Byz(?SECRET)),
    [{P3, N3}] = start_peers(1, Byz(<<"another-secret-entirely-000">>)),
    [{P4, N4}] = start_peers(1, Byz(?SECRET)),
    Peers = [{P1, N1}, {P2, N2}, {P3, N3}, {P4, N4}],
    connect_all(Peers),
    ok = peer:call(P1, ?MODULE, start_agents, [ids(N1, 4), <<"q">>, 42]),
    ok = peer:call(P2, ?MODULE, start_agents, [[<<"liar">>], <<"q">>, 666]),
    ok = peer:call(P3, ?MODULE, start_agents, [ids(N3, 1), <<"q">>, 42]),
    ok = peer:call(P4, ?MODULE, start_agents, [ids(N4, 1), <<"q">>, 42]),
    ok = peer:call(P4, ?MODULE, start_replayer, []),
    All = lists:sort(ids(N1, 4) ++ [<<"liar">>] ++ ids(N3, 1) ++ ids(N4, 1)),
    [wait_sees(P, All) || {P, _} <- Peers],
    Results = [peer:call(P1, ?MODULE, route_one, [#{n => I}, #{capabilities => [<<"q">>], quorum => 3}])
               || I <- lists:seq(1, 30)],
    ct:log("quorum answers: ~p", [[{element(1, R), element(2, R)} || R <- Results]]),
    ?assertEqual(lists:duplicate(30, 42), [R || {ok, R, _} <- Results]),
    {ok, 42, #{quorum := Q}} = hd(Results),
    ct:log("first task's quorum: ~p", [Q]),
    ?assertMatch(#{f := 3, agreeing := 4}, Q),
    Black = fun(W) -> peer:call(P1, erlmcp_flow_byzantine_detector, is_blacklisted, [W]) end,
    wait_until(fun() -> Black(<<"liar">>) andalso Black(N3) andalso Black(N4) end, 5000),
    ?assertNot(Black(N1)),
    ?assertNot(Black(N2)),
    [?assertNot(Black(Id)) || Id <- ids(N1, 4)],
    ?assertMatch(#{dishonest := D, blacklisted := true} when D >= 10,
                 peer:call(P1, erlmcp_flow_byzantine_detector, reputation, [<<"liar">>])),
    %% the blacklisted leave every strategy's candidates on the caller's node
    %% (once the byzantine detector has published them to the routing path)
    wait_until(fun() ->
                       Excl = peer:call(P1, erlmcp_flow_byzantine_detector, excluded, []),
                       [] =:= [<<"liar">> | ids(N3, 1) ++ ids(N4, 1)] -- Excl
               end, 5000),
    Plain = peer:call(P1, ?MODULE, route_many, [60, #{capabilities => [<<"q">>]}, #{}]),
    ?assertEqual(60, length([ok || {ok, 42, _} <- Plain])),
    ?assertEqual([], lists:usort([Id || {ok, _, #{agent_id := Id}} <- Plain]) -- ids(N1, 4)),
    stop_peers(Peers),
    ok.

%% A new build rolled through three nodes under load, node by node:
%% drained (erlmcp_flow:drain/1), stopped, started again under the same
%% name from the new build (another library folder, another version),
%% agents registered again. The load runs on a fourth node throughout,
%% every task non-idempotent (one attempt: a task lost by a node going away
%% would fail); none fails, and each drained node had tasks in flight.
rolling_upgrade(Config) ->
    Workers = start_peers(3),
    [{PL, L}] = start_peers(1),
    connect_all([{PL, L} | Workers]),
    [ok = peer:call(P, ?MODULE, start_agents, [ids(N, 3), ?CAP]) || {P, N} <- Workers],
    All = lists:sort(lists:append([ids(N, 3) || {_, N} <- Workers])),
    [wait_sees(P, All) || {P, _} <- [{PL, L} | Workers]],
    {NewPaths, NewVsn} = new_build(?config(priv_dir, Config)),
    Load = peer:call(PL, ?MODULE, start_load, [8, #{capabilities => [?CAP], idempotent => false},
                                               #{sleep => 20}]),
    Rolled = lists:foldl(
               fun({P, N}, Done) ->
                       %% tasks of the load node in flight on this node now
                       wait_until(fun() -> peer:call(PL, erlmcp_flow_router, in_flight_to, [N]) > 0 end,
                                  10000),
                       T0 = erlang:monotonic_time(millisecond),
                       ok = peer:call(P, erlmcp_flow, drain, [#{timeout => 20000}]),
                       Drained = erlang:monotonic_time(millisecond) - T0,
                       %% out of routing everywhere before drain returned
                       ?assertEqual([], [Id || Id <- peer:call(PL, ?MODULE, sees, []),
                                               lists:member(Id, ids(N, 3))]),
                       ?assertEqual(0, peer:call(PL, erlmcp_flow_router, in_flight_to, [N])),
                       stop_peers([{P, N}]),
                       {P2, N} = start_peer(N, NewPaths, []),
                       [true = peer:call(P2, net_kernel, connect_node, [Other])
                        || Other <- [L | [WN || {_, WN} <- Workers, WN =/= N]]],
                       ok = peer:call(P2, ?MODULE, start_agents, [ids(N, 3), ?CAP]),
                       wait_sees(PL, All, 10000),
                       ?assertMatch({ok, NewVsn}, peer:call(P2, application, get_key, [erlmcp_flow, vsn])),
                       ct:log("~ts drained in ~b ms, back on ~ts", [N, Drained, NewVsn]),
                       [{P2, N} | Done]
               end, [], Workers),
    #{ok := Ok, failed := Failed} = peer:call(PL, ?MODULE, stop_load, [Load], 30000),
    ct:log("load through the roll: ~b tasks answered, failures ~p", [Ok, Failed]),
    ?assertEqual([], Failed),
    ?assert(Ok > 100),
    %% every node runs the new build and serves tasks
    Results = peer:call(PL, ?MODULE, route_many, [60, #{capabilities => [?CAP]}, #{}]),
    ?assertEqual(lists:sort([N || {_, N} <- Rolled]),
                 lists:usort([Where || {ok, {Where, _}, _} <- Results])),
    stop_peers([{PL, L} | Rolled]),
    ok.

%% The new build: this build's erlmcp_flow (ebin and priv) in a library
%% folder of its own, its version `Vsn+next'; the code path with it in
%% place of this build's.
new_build(Dir) ->
    Ebin = filename:dirname(code:where_is_file("erlmcp_flow.app")),
    {ok, [{application, erlmcp_flow, Props}]} = file:consult(filename:join(Ebin, "erlmcp_flow.app")),
    Vsn = proplists:get_value(vsn, Props) ++ "+next",
    Lib = filename:join(Dir, "erlmcp_flow-" ++ Vsn),
    NewEbin = filename:join(Lib, "ebin"),
    NewPriv = filename:join(Lib, "priv"),
    ok = filelib:ensure_path(NewEbin),
    ok = filelib:ensure_path(NewPriv),
    [{ok, _} = file:copy(F, filename:join(NewEbin, filename:basename(F)))
     || F <- filelib:wildcard(filename:join(Ebin, "*.beam"))],
    App = {application, erlmcp_flow, lists:keystore(vsn, 1, Props, {vsn, Vsn})},
    ok = file:write_file(filename:join(NewEbin, "erlmcp_flow.app"), io_lib:format("~p.~n", [App])),
    Nif = filename:join(code:priv_dir(erlmcp_flow), "erlmcp_flow_nif.so"),
    {ok, _} = file:copy(Nif, filename:join(NewPriv, "erlmcp_flow_nif.so")),
    Paths = [case P of Ebin -> NewEbin; _ -> P end || P <- build_paths()],
    {Paths, Vsn}.

%% Distributed Erlang over TLS (inet_tls_dist, each node's certificate
%% verified by the other): three nodes share their agents and route to each
%% other as over plain TCP; their links are TLS; a node without the
%% certificates cannot join. (Cover is not attached: this node speaks plain
%% distribution.)
tls_distribution(Config) ->
    Dir = filename:join(?config(priv_dir, Config), "tls_dist"),
    #{server := #{cert := SC, key := SK, cacerts := SCa},
      client := #{cert := CC, key := CK, cacerts := CCa}} = erlmcp_flow_test_util:tls_files(Dir),
    OptFile = filename:join(Dir, "dist.conf"),
    ok = file:write_file(OptFile, io_lib:format("~p.~n", [[{server, [{certfile, SC}, {keyfile, SK},
                                                                     {cacertfile, SCa},
                                                                     {verify, verify_peer},
                                                                     {fail_if_no_peer_cert, true}]},
                                                           {client, [{certfile, CC}, {keyfile, CK},
                                                                     {cacertfile, CCa},
                                                                     {verify, verify_peer}]}]])),
    Tls = ["-proto_dist", "inet_tls", "-ssl_dist_optfile", OptFile],
    Peers = [start_peer(peer:random_name("tls"), build_paths(), [], #{args => Tls, cover => false})
             || _ <- lists:seq(1, 3)],
    connect_all(Peers),
    [ok = peer:call(P, ?MODULE, start_agents, [ids(N, 2), ?CAP]) || {P, N} <- Peers],
    All = lists:sort(lists:append([ids(N, 2) || {_, N} <- Peers])),
    [wait_sees(P, All) || {P, _} <- Peers],
    Nodes = lists:sort([N || {_, N} <- Peers]),
    [begin
         Results = peer:call(P, ?MODULE, route_many, [30, #{capabilities => [?CAP]}, #{}]),
         ?assertEqual(Nodes, lists:usort([Where || {ok, {Where, _}, _} <- Results]))
     end || {P, _} <- Peers],
    [{PA, _} | _] = Peers,
    Protocols = [begin
                     {ok, Info} = peer:call(PA, net_kernel, node_info, [N]),
                     element(4, proplists:get_value(address, Info))
                 end || {_, N} <- tl(Peers)],
    ct:log("links of the first node: ~p", [Protocols]),
    ?assertEqual([tls, tls], Protocols),
    %% a node on plain distribution cannot join them
    [{PP, PN}] = [start_peer(peer:random_name("plain"), build_paths(), [], #{cover => false})],
    ?assertNot(peer:call(PP, net_kernel, connect_node, [element(2, hd(Peers))])),
    [?assertNot(lists:member(PN, peer:call(P, erlang, nodes, []))) || {P, _} <- Peers],
    [catch peer:stop(P) || {P, _} <- [{PP, PN} | Peers]],
    ok.

%%--------------------------------------------------------------------
%% On the peers
%%--------------------------------------------------------------------

%% `N' processes running tasks one after another until stop_load/1; each
%% counts its answers and keeps its failures.
start_load(N, Req, Task) ->
    Owner = self(),
    Pids = [spawn(?MODULE, load_loop, [Owner, Req, Task, {0, []}]) || _ <- lists:seq(1, N)],
    {load, Pids}.

load_loop(Owner, Req, Task, {Ok, Failed} = Acc) ->
    receive
        {stop, From} -> From ! {load_done, self(), Acc}
    after 0 ->
        case erlmcp_flow:execute(Task, Req, #{timeout => 10000}) of
            {ok, _, _} -> load_loop(Owner, Req, Task, {Ok + 1, Failed});
            Error -> load_loop(Owner, Req, Task, {Ok, [Error | Failed]})
        end
    end.

stop_load({load, Pids}) ->
    [P ! {stop, self()} || P <- Pids],
    Done = [receive {load_done, P, Acc} -> Acc end || P <- Pids],
    #{ok => lists:sum([Ok || {Ok, _} <- Done]), failed => lists:append([F || {_, F} <- Done])}.

start_agents(Ids, Cap, Answer) ->
    [ok = erlmcp_flow:register_agent(Id, spawn(?MODULE, agent, [Id, self(), Answer]), [Cap])
     || Id <- Ids],
    ok.

%% Answers `Answer' whoever asks: the same value on every honest node.
agent(Id, Owner, Answer) ->
    receive
        {execute_task, _Task, _Ctx, From, Ref} ->
            From ! {task_result, Ref, {ok, Answer}},
            agent(Id, Owner, Answer);
        _ ->
            agent(Id, Owner, Answer)
    end.

%% This node's vote service replaced by one that answers the first request
%% honestly and every later one with that first signed vote again.
start_replayer() ->
    ok = supervisor:terminate_child(erlmcp_flow_cluster_sup, erlmcp_flow_vote_service),
    Pid = spawn(?MODULE, replayer, [undefined]),
    true = register(erlmcp_flow_vote_service, Pid),
    ok.

replayer(Saved) ->
    receive
        {flow_vote_request, ReplyTo, Ref, Task, Ctx, Id, Pid, Timeout} when Saved =:= undefined ->
            ok = erlmcp_flow_vote_service:vote({flow_vote_request, self(), Ref, Task, Ctx, Id, Pid,
                                                Timeout}),
            receive
                {flow_vote, Ref, Vote, Sig} = Msg ->
                    ReplyTo ! Msg,
                    replayer({Vote, Sig})
            after 5000 ->
                    replayer(Saved)
            end;
        {flow_vote_request, ReplyTo, Ref, _Task, _Ctx, _Id, _Pid, _Timeout} ->
            {Vote, Sig} = Saved,
            ReplyTo ! {flow_vote, Ref, Vote, Sig},
            replayer(Saved)
    end.

start_agents(Ids, Cap) ->
    ok = started_table(),
    [ok = erlmcp_flow:register_agent(Id, spawn(?MODULE, agent, [Id, self()]), [Cap]) || Id <- Ids],
    ok.

%% Tasks each agent of this node has started: a public table whose owner
%% lives as long as the node (the test waits for an agent to hold a task
%% instead of sleeping).
started_table() ->
    case ets:whereis(cluster_suite_started) of
        undefined ->
            Self = self(),
            spawn(fun() ->
                          _ = ets:new(cluster_suite_started, [named_table, public]),
                          Self ! started_table,
                          receive never -> ok end
                  end),
            receive started_table -> ok end;
        _ ->
            ok
    end.

started(Id) ->
    case ets:lookup(cluster_suite_started, Id) of
        [{Id, N}] -> N;
        [] -> 0
    end.

%% Answers `{node(), Id}', after `sleep' ms when the task asks.
agent(Id, _Owner) ->
    receive
        {execute_task, Task, _Ctx, From, Ref} ->
            ets:update_counter(cluster_suite_started, Id, 1, {Id, 0}),
            _ = case Task of
                    #{sleep := Ms} -> timer:sleep(Ms);
                    _ -> ok
                end,
            From ! {task_result, Ref, {ok, {node(), Id}}},
            agent(Id, _Owner);
        _ ->
            agent(Id, _Owner)
    end.

route_many(N, Req, Opts) ->
    Self = self(),
    Pids = [spawn_link(fun() -> Self ! {done, self(), erlmcp_flow:execute(#{n => I}, Req, Opts)} end)
            || I <- lists:seq(1, N)],
    [receive {done, P, R} -> R end || P <- Pids].

route_one(Task, Req) ->
    erlmcp_flow:execute(Task, Req).

sees() ->
    lists:sort([Id || {Id, _, _, _} <- erlmcp_flow_registry:list_agents()]).

%%--------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------

start_peers(N) ->
    start_peers(N, []).

start_peers(N, Env) ->
    [start_peer(peer:random_name("flow"), build_paths(), Env) || _ <- lists:seq(1, N)].

%% This build's code path (its dependencies and tests included).
build_paths() ->
    [P || P <- code:get_path(), string:find(P, "_build") =/= nomatch].

%% A peer node `Name' (a node name, or the name part of one) running
%% erlmcp_flow from `Paths'.
start_peer(Name, Paths, Env) ->
    start_peer(Name, Paths, Env, #{}).

%% With `args' (more emulator arguments) and `cover' (false: not a cover
%% node, for peers this node cannot reach by distribution).
start_peer(Name, Paths, Env, Opts) ->
    Short = hd(string:split(to_list(Name), "@")),
    {ok, Peer, Node} =
        peer:start(#{name => Short, connection => standard_io,
                     args => ["-setcookie", atom_to_list(?COOKIE),
                              "-kernel", "dist_auto_connect", "once",
                              "-kernel", "prevent_overlapping_partitions", "false"
                              | maps:get(args, Opts, []) ++ lists:append([["-pa", P] || P <- Paths])]}),
    _ = maps:get(cover, Opts, true) andalso (ok =:= erlmcp_flow_cover_peers:attach(Node, ?COOKIE)),
    ok = peer:call(Peer, logger, set_primary_config, [level, error]),
    ok = peer:call(Peer, application, load, [erlmcp_flow]),
    ok = peer:call(Peer, application, set_env,
                   [erlmcp_flow, failure_detector, #{heartbeat_interval => ?HEARTBEAT_MS,
                                                     min_samples => 5}]),
    [ok = peer:call(Peer, application, set_env, [erlmcp_flow, K, V]) || {K, V} <- Env],
    {ok, _} = peer:call(Peer, application, ensure_all_started, [erlmcp_flow]),
    {Peer, Node}.

to_list(A) when is_atom(A) -> atom_to_list(A);
to_list(S) -> S.

connect_all(Peers) ->
    [true = peer:call(P, net_kernel, connect_node, [Other])
     || {P, N} <- Peers, {_, Other} <- Peers, Other > N],
    ok.

stop_peers(Peers) ->
    ok = erlmcp_flow_cover_peers:detach([N || {_, N} <- Peers]),
    [catch peer:stop(P) || {P, _} <- Peers],
    ok.

ids(Node, K) ->
    [iolist_to_binary([atom_to_list(Node), "/", integer_to_list(I)]) || I <- lists:seq(1, K)].

wait_sees(Peer, Ids) ->
    wait_sees(Peer, Ids, 5000).

wait_sees(Peer, Ids, Ms) ->
    wait_until(fun() -> peer:call(Peer, ?MODULE, sees, []) =:= Ids end, Ms).

wait_until(Fun, Ms) ->
    erlmcp_flow_test_util:await(Fun, Ms).
