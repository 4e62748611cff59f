%% Two-level routing (`cluster.mode => summary') on OTP peer nodes of this
%% machine: each node holds only its own agents and its peers' summaries; a
%% task goes to a node by those and the node picks the agent. Ids stay
%% unique cluster-wide, a node lost between the two levels loses no
%% idempotent task, a split cluster's twin ids are settled when it heals,
%% quorum tasks reach distinct nodes, and a node leaving and rejoining
%% while tasks run fails none of them.
-module(erlmcp_flow_cluster_summary_SUITE).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").

-export([all/0, init_per_suite/1, end_per_suite/1]).
-export([two_level_routing/1, direct_agents/1, node_lost_between_levels/1,
         direct_node_lost/1, stale_summary/1, split_and_heal/1, quorum_on_distinct_nodes/1, churn/1]).
%% run on the peers
-export([agent_count/1, own_agents/0, mirrored/0, route_many/3]).

-define(CAP, <<"work">>).
-define(SUITE_CLUSTER, erlmcp_flow_cluster_SUITE).
-define(SUMMARY, [{cluster, #{mode => summary, summary_interval_ms => 20}}]).
%% every task for another node forwarded
-define(FORWARD_ONLY, [{cluster, #{mode => summary, summary_interval_ms => 20, direct_agents => 0}}]).
-define(SECRET, <<"the-cluster-secret-of-the-suite">>).

all() -> [two_level_routing, direct_agents, node_lost_between_levels, direct_node_lost,
          stale_summary, split_and_heal, quorum_on_distinct_nodes, churn].

%% the same needs as the mirror-mode suite's (epmd), the same cover peers
init_per_suite(Config) ->
    ?SUITE_CLUSTER:init_per_suite(Config).

end_per_suite(Config) ->
    ?SUITE_CLUSTER:end_per_suite(Config).

%%--------------------------------------------------------------------
%% Cases
%%--------------------------------------------------------------------

%% Three nodes: each sees the others' agents as summaries only, and routes
%% tasks to every node; `node => local' keeps a task home; an id taken on
%% one node is refused on another until it is given back; a node joining
%% later is seen and sees everything.
two_level_routing(_Config) ->
    Peers = ?SUITE_CLUSTER:start_peers(3, ?FORWARD_ONLY),
    connect_all(Peers),
    [ok = peer:call(P, ?SUITE_CLUSTER, start_agents, [ids(N, 3), ?CAP]) || {P, N} <- Peers],
    [wait_count(P, 9) || {P, _} <- Peers],
    %% no node holds another's agents
    [?assertEqual(lists:sort(ids(N, 3)), peer:call(P, ?MODULE, own_agents, [])) || {P, N} <- Peers],
    [?assertEqual(summary, peer:call(P, erlmcp_flow_cluster, mode, [])) || {P, _} <- Peers],
    Nodes = lists:sort([N || {_, N} <- Peers]),
    %% tasks from each node reach every node; a forwarded one names it
    [begin
         Results = peer:call(P, ?MODULE, route_many, [90, #{capabilities => [?CAP]}, #{}]),
         ?assertEqual(90, length([ok || {ok, _, _} <- Results])),
         ?assertEqual(Nodes, lists:usort([Where || {ok, {Where, _}, _} <- Results])),
         [?assertEqual(Where, maps:get(node, Meta)) || {ok, {Where, _}, Meta} <- Results, Where =/= N],
         [?assertNot(is_map_key(node, Meta)) || {ok, {Where, _}, Meta} <- Results, Where =:= N]
     end || {P, N} <- Peers],
    %% the task's span on the caller's node is the parent of the one that
    %% ran it: one trace
    {PA, A} = hd(Peers),
    [{ok, {Far, _}, #{trace_id := TraceId, span_id := SpanId}} | _] =
        [R || {ok, {W, _}, _} = R <- peer:call(PA, ?MODULE, route_many, [30, #{capabilities => [?CAP]}, #{}]),
              W =/= A],
    {PFar, Far} = lists:keyfind(Far, 2, Peers),
    {ok, FarSpans} = peer:call(PFar, erlmcp_flow_correlation_tracker, get_trace_chain, [TraceId]),
    ?assertMatch([#{kind := task, outcome := ok}],
                 [S || #{parent_span_id := P} = S <- FarSpans, P =:= SpanId]),
    {ok, HereSpan} = peer:call(PA, erlmcp_flow_correlation_tracker, lookup, [SpanId]),
    ?assertMatch(#{trace_id := TraceId, outcome := ok}, HereSpan),
    %% node => local: this node's agents only
    [begin
         Local = peer:call(P, ?MODULE, route_many, [30, #{capabilities => [?CAP], node => local}, #{}]),
         ?assertEqual([N], lists:usort([Where || {ok, {Where, _}, _} <- Local]))
     end || {P, N} <- Peers],
    %% a capability no node has: the router's answer
    ?assertEqual({error, no_agents_available},
                 peer:call(PA, erlmcp_flow, execute, [#{}, #{capabilities => [<<"none">>]}])),
    %% ids are unique across the cluster, without mirrors
    {PB, B} = lists:nth(2, Peers),
    [Taken | _] = ids(B, 3),
    Init = peer:call(PA, erlang, whereis, [init]),
    ?assertEqual({error, already_registered},
                 peer:call(PA, erlmcp_flow, register_agent, [Taken, Init, [?CAP]])),
    ok = peer:call(PB, erlmcp_flow, unregister_agent, [Taken]),
    wait_until(fun() -> ok =:= peer:call(PA, erlmcp_flow, register_agent, [Taken, Init, [?CAP]]) end,
               5000),
    ok = peer:call(PA, erlmcp_flow, unregister_agent, [Taken]),
    [wait_count(P, 8) || {P, _} <- Peers],
    %% a node that joins now is seen, and sees every node
    [{PD, D}] = ?SUITE_CLUSTER:start_peers(1, ?FORWARD_ONLY),
    connect_all([{PD, D} | Peers]),
    ok = peer:call(PD, ?SUITE_CLUSTER, start_agents, [ids(D, 3), ?CAP]),
    T0 = erlang:monotonic_time(millisecond),
    [wait_count(P, 11) || {P, _} <- [{PD, D} | Peers]],
    ct:log("a node joining: every node counts 11 agents after ~b ms",
           [erlang:monotonic_time(millisecond) - T0]),
    %% its ids are claimed where they belong: an id of D's refused on A
    [DId | _] = ids(D, 3),
    ?assertEqual({error, already_registered},
                 peer:call(PA, erlmcp_flow, register_agent, [DId, Init, [?CAP]])),
    stop_peers([{PD, D} | Peers]).

%% Three nodes naming two of their three agents for direct routing: each
%% node mirrors those of its peers (with the peer's node capability) and
%% no other; tasks reach every node, each remote one naming its node, and
%% the agents mirrored change with those named.
direct_agents(_Config) ->
    Env = [{cluster, #{mode => summary, summary_interval_ms => 20, direct_agents => 2}}],
    Peers = ?SUITE_CLUSTER:start_peers(3, Env),
    connect_all(Peers),
    [ok = peer:call(P, ?SUITE_CLUSTER, start_agents, [ids(N, 3), ?CAP]) || {P, N} <- Peers],
    [wait_count(P, 9) || {P, _} <- Peers],
    Nodes = lists:sort([N || {_, N} <- Peers]),
    Named = fun(N) -> lists:sublist(lists:sort(ids(N, 3)), 2) end,
    [wait_until(fun() -> peer:call(P, ?MODULE, mirrored, []) =:=
                             lists:sort(lists:append([Named(O) || O <- Nodes, O =/= N])) end, 5000)
     || {P, N} <- Peers],
    {PA, A} = hd(Peers),
    [{_, _, _, Caps} | _] = [R || {Id, _, _, _} = R <- peer:call(PA, erlmcp_flow_registry, list_agents, []),
                                  lists:member(Id, Named(lists:nth(2, Nodes -- [A])))],
    ?assert(lists:member(erlmcp_flow_cluster_summary:node_capability(lists:nth(2, Nodes -- [A])), Caps)),
    [begin
         Results = peer:call(P, ?MODULE, route_many, [90, #{capabilities => [?CAP]}, #{}]),
         ?assertEqual(90, length([ok || {ok, _, _} <- Results])),
         ?assertEqual(Nodes, lists:usort([Where || {ok, {Where, _}, _} <- Results])),
         [?assertEqual(Where, maps:get(node, Meta)) || {ok, {Where, _}, Meta} <- Results, Where =/= N]
     end || {P, N} <- Peers],
    %% a named agent unregistered: the next one by id is named instead
    {PB, B} = lists:keyfind(lists:nth(2, Nodes -- [A]), 2, Peers),
    ok = peer:call(PB, erlmcp_flow, unregister_agent, [hd(Named(B))]),
    wait_until(fun() -> lists:member(lists:last(lists:sort(ids(B, 3))), peer:call(PA, ?MODULE, mirrored, []))
                            andalso not lists:member(hd(Named(B)), peer:call(PA, ?MODULE, mirrored, []))
               end, 5000),
    stop_peers(Peers).

%% A node that goes away while it runs tasks forwarded to it: the
%% idempotent ones are run on another node, the others answer
%% `{node_down, Node}'; no task waits past it.
node_lost_between_levels(_Config) ->
    Peers = ?SUITE_CLUSTER:start_peers(4, ?FORWARD_ONLY),
    connect_all(Peers),
    [{PA, A}, {PB, B}, {PC, C}, {PD, D}] = Peers,
    [ok = peer:call(P, ?SUITE_CLUSTER, start_agents, [[<<"slow-", (atom_to_binary(N))/binary>>], <<"slow">>])
     || {P, N} <- [{PB, B}, {PC, C}, {PD, D}]],
    [wait_count(P, 3, <<"slow">>) || {P, _} <- Peers],
    %% idempotent tasks, three routed by key to B: run elsewhere
    W1 = route_async(PA, keys(3, B, [B, C, D]), #{capabilities => [<<"slow">>]}),
    wait_until(fun() -> peer:call(PB, ?SUITE_CLUSTER, started, [<<"slow-", (atom_to_binary(B))/binary>>]) >= 1 end,
               10000),
    stop_peers([{PB, B}]),
    Answers1 = collect(W1),
    ct:log("idempotent tasks after B went away: ~p", [Answers1]),
    ?assertEqual(6, length([ok || {ok, _, _} <- Answers1])),
    ?assertEqual([], [W || {ok, {W, _}, _} <- Answers1, W =:= B]),
    wait_count(PA, 2, <<"slow">>),
    %% not idempotent: those C held fail naming it, the others are answered
    W2 = route_async(PA, keys(3, C, [C, D]), #{capabilities => [<<"slow">>], idempotent => false}),
    wait_until(fun() -> peer:call(PC, ?SUITE_CLUSTER, started, [<<"slow-", (atom_to_binary(C))/binary>>]) >= 1 end,
               10000),
    stop_peers([{PC, C}]),
    Answers2 = collect(W2),
    ct:log("tasks that are not idempotent after C went away: ~p", [Answers2]),
    ?assertEqual(3, length([E || {error, {node_down, N}} = E <- Answers2, N =:= C])),
    ?assertEqual(3, length([ok || {ok, {W, _}, _} <- Answers2, W =:= D])),
    stop_peers([{PA, A}, {PD, D}]).

%% The same with agents routed to directly: the idempotent tasks on the
%% lost node's agents are run on another node.
direct_node_lost(_Config) ->
    Peers = start_peers(3),
    connect_all(Peers),
    [{PA, A}, {PB, B}, {PC, C}] = Peers,
    [ok = peer:call(P, ?SUITE_CLUSTER, start_agents, [[<<"slow-", (atom_to_binary(N))/binary>>], <<"slow">>])
     || {P, N} <- [{PB, B}, {PC, C}]],
    [wait_count(P, 2, <<"slow">>) || {P, _} <- Peers],
    wait_until(fun() -> length(peer:call(PA, ?MODULE, mirrored, [])) =:= 2 end, 5000),
    W = route_async(PA, keys(3, B, [B, C]), #{capabilities => [<<"slow">>]}),
    wait_until(fun() -> peer:call(PB, ?SUITE_CLUSTER, started, [<<"slow-", (atom_to_binary(B))/binary>>]) >= 1 end,
               10000),
    stop_peers([{PB, B}]),
    Answers = collect(W),
    ct:log("tasks after B went away: ~p", [Answers]),
    ?assertEqual(6, length([ok || {ok, {Where, _}, #{node := N}} <- Answers, Where =:= C, N =:= C])),
    stop_peers([{PA, A}, {PC, C}]).

%% A node whose summary still names agents it no longer has: the tasks sent
%% there are sent on to a node that has them.
stale_summary(_Config) ->
    Peers = ?SUITE_CLUSTER:start_peers(3, ?FORWARD_ONLY),
    connect_all(Peers),
    [{PA, A}, {PB, B}, {PC, C}] = Peers,
    [ok = peer:call(P, ?SUITE_CLUSTER, start_agents, [[<<"x-", (atom_to_binary(N))/binary>>], <<"x">>])
     || {P, N} <- [{PB, B}, {PC, C}]],
    [wait_count(P, 2, <<"x">>) || {P, _} <- Peers],
    %% B publishes nothing more (its cluster process suspended), and its
    %% agent goes
    ok = peer:call(PB, sys, suspend, [erlmcp_flow_cluster]),
    ok = peer:call(PB, erlmcp_flow, unregister_agent, [<<"x-", (atom_to_binary(B))/binary>>]),
    ?assertEqual(2, peer:call(PA, ?MODULE, agent_count, [<<"x">>])),
    Results = peer:call(PA, ?MODULE, route_many, [40, #{capabilities => [<<"x">>]}, #{}]),
    ?assertEqual([{ok, C}], lists:usort([{ok, W} || {ok, {W, _}, _} <- Results] ++
                                          [E || {error, _} = E <- Results])),
    ?assertEqual(40, length(Results)),
    ok = peer:call(PB, sys, resume, [erlmcp_flow_cluster]),
    wait_count(PA, 1, <<"x">>),
    stop_peers([{PA, A}, {PB, B}, {PC, C}]).

%% Four nodes split 2-2, each side registering the same id meanwhile:
%% after the heal one holder is left, the node with the smaller name, and
%% every node routes to it.
split_and_heal(_Config) ->
    Peers = start_peers(4),
    connect_all(Peers),
    [{PA, A}, {PB, B}, {PC, C}, {_PD, D}] = Peers,
    [ok = peer:call(P, ?SUITE_CLUSTER, start_agents, [ids(N, 2), ?CAP]) || {P, N} <- Peers],
    [wait_count(P, 8) || {P, _} <- Peers],
    [true = peer:call(P, erlang, disconnect_node, [Other]) || P <- [PA, PB], Other <- [C, D]],
    [wait_count(P, 4) || {P, _} <- Peers],
    %% each side routes to its own
    [?assertEqual(lists:sort(Side),
                  lists:usort([W || {ok, {W, _}, _} <- peer:call(P, ?MODULE, route_many,
                                                                 [40, #{capabilities => [?CAP]}, #{}])]))
     || {P, Side} <- [{PA, [A, B]}, {PC, [C, D]}]],
    ok = peer:call(PA, ?SUITE_CLUSTER, start_agents, [[<<"twin">>], <<"twin">>]),
    ok = peer:call(PC, ?SUITE_CLUSTER, start_agents, [[<<"twin">>], <<"twin">>]),
    T0 = erlang:monotonic_time(millisecond),
    [true = peer:call(P, net_kernel, connect_node, [Other]) || P <- [PA, PB], Other <- [C, D]],
    Winner = min(A, C),
    Loser = max(A, C),
    {PLoser, _} = lists:keyfind(Loser, 2, Peers),
    %% the loser's own twin is gone (the winner's may be mirrored there)
    wait_until(fun() -> case peer:call(PLoser, erlmcp_flow_registry, lookup_pid, [<<"twin">>]) of
                            Pid when is_pid(Pid) -> node(Pid) =:= Winner;
                            undefined -> true
                        end
               end, 5000),
    [begin wait_count(P, 8), wait_count(P, 1, <<"twin">>) end || {P, _} <- Peers],
    ct:log("healed: one twin left, every node counts 9 agents after ~b ms",
           [erlang:monotonic_time(millisecond) - T0]),
    [begin
         Twins = peer:call(P, ?MODULE, route_many, [10, #{capabilities => [<<"twin">>]}, #{}]),
         ?assertEqual([{Winner, <<"twin">>}], lists:usort([R || {ok, R, _} <- Twins]))
     end || {P, _} <- Peers],
    stop_peers(Peers).

%% A quorum task asks one agent on each of three nodes, though the caller
%% holds only its own: every vote verified, from three agents.
quorum_on_distinct_nodes(_Config) ->
    Env = [{byzantine, #{hmac_secret => ?SECRET}} | ?SUMMARY],
    Peers = [erlmcp_flow_cluster_SUITE:start_peers(1, Env) || _ <- lists:seq(1, 3)],
    Flat = lists:append(Peers),
    connect_all(Flat),
    [ok = peer:call(P, ?SUITE_CLUSTER, start_agents, [[<<"q-", (atom_to_binary(N))/binary>>], <<"q">>, same])
     || {P, N} <- Flat],
    [wait_count(P, 3, <<"q">>) || {P, _} <- Flat],
    [{PA, _} | _] = Flat,
    [begin
         %% three asked (the only agent here, and one node each of the
         %% others' picking), accepted once two agree
         {ok, same, #{quorum := Q, attempts := Asked}} =
             peer:call(PA, erlmcp_flow, execute, [#{n => I}, #{capabilities => [<<"q">>], quorum => 1}]),
         ?assertEqual(3, Asked),
         ?assertMatch(#{f := 1, rejected := 0, agreeing := Agreeing} when Agreeing >= 2, Q)
     end || I <- lists:seq(1, 5)],
    stop_peers(Flat).

%% Six nodes, tasks running from the first all along, while another node
%% leaves (stopped) and a new one joins, three times over: no task fails,
%% and every change is seen.
churn(_Config) ->
    Peers = start_peers(6),
    connect_all(Peers),
    [ok = peer:call(P, ?SUITE_CLUSTER, start_agents, [ids(N, 5), ?CAP]) || {P, N} <- Peers],
    [wait_count(P, 30) || {P, _} <- Peers],
    [{PA, _} | Others] = Peers,
    Load = peer:call(PA, ?SUITE_CLUSTER, start_load, [8, #{capabilities => [?CAP]}, #{}]),
    Final = lists:foldl(
              fun(Round, [{PGone, Gone} | Rest]) ->
                      T0 = erlang:monotonic_time(millisecond),
                      stop_peers([{PGone, Gone}]),
                      wait_count(PA, 25),
                      [{PNew, New}] = start_peers(1),
                      connect_all([{PNew, New} | [{PA, node_of(PA)} | Rest]]),
                      ok = peer:call(PNew, ?SUITE_CLUSTER, start_agents, [ids(New, 5), ?CAP]),
                      [wait_count(P, 30) || {P, _} <- [{PA, x}, {PNew, New} | Rest]],
                      ct:log("round ~b: ~ts left, ~ts joined, every node counts 30 agents after ~b ms",
                             [Round, Gone, New, erlang:monotonic_time(millisecond) - T0]),
                      Rest ++ [{PNew, New}]
              end, Others, lists:seq(1, 3)),
    #{ok := Ok, failed := Failed} = peer:call(PA, ?SUITE_CLUSTER, stop_load, [Load], 60000),
    ct:log("tasks during the churn: ~b answered, failed: ~p", [Ok, Failed]),
    ?assertEqual([], Failed),
    ?assert(Ok > 0),
    stop_peers([{PA, node_of(PA)} | Final]).

%%--------------------------------------------------------------------
%% On the peers
%%--------------------------------------------------------------------

%% Agents holding `Cap' in this node's view of the cluster's summaries.
agent_count(Cap) ->
    lists:sum([N || #{sets := Sets} <- maps:values(erlmcp_flow_cluster:summaries()),
                    {Set, N} <- Sets, lists:member(Cap, Set)]).

own_agents() ->
    lists:sort([Id || {Id, Pid, _, _} <- erlmcp_flow_registry:list_agents(), node(Pid) =:= node()]).

%% The other nodes' agents this node mirrors (those named for direct routing).
mirrored() ->
    lists:sort([Id || {Id, Pid, _, _} <- erlmcp_flow_registry:list_agents(), node(Pid) =/= node()]).

route_many(N, Req, Opts) ->
    ?SUITE_CLUSTER:route_many(N, Req, Opts).

%%--------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------

start_peers(N) ->
    ?SUITE_CLUSTER:start_peers(N, ?SUMMARY).

connect_all(Peers) -> ?SUITE_CLUSTER:connect_all(Peers).
stop_peers(Peers) -> ?SUITE_CLUSTER:stop_peers(Peers).
ids(Node, K) -> ?SUITE_CLUSTER:ids(Node, K).
wait_until(Fun, Ms) -> ?SUITE_CLUSTER:wait_until(Fun, Ms).

node_of(Peer) ->
    peer:call(Peer, erlang, node, []).

wait_count(Peer, N) ->
    wait_count(Peer, N, ?CAP).

wait_count(Peer, N, Cap) ->
    wait_until(fun() -> peer:call(Peer, ?MODULE, agent_count, [Cap]) =:= N end, 10000).

%% Tasks from `Peer' at once, one routed by each key (`consistent_hash'),
%% each answer sent here.
route_async(Peer, Keys, Req) ->
    Caller = self(),
    [spawn_link(fun() ->
                        Req1 = Req#{strategy => consistent_hash, sticky_key => Key},
                        Caller ! {answer, self(), peer:call(Peer, ?SUITE_CLUSTER, route_one,
                                                            [#{sleep => 1000}, Req1], 60000)}
                end) || Key <- Keys].

%% `2K' sticky keys: `K' that `Nodes' hash to `Node' first, and `K' others.
keys(K, Node, Nodes) ->
    All = [integer_to_binary(I) || I <- lists:seq(1, 1000)],
    Mine = [Key || Key <- All, erlmcp_flow_cluster_summary:owner(Key, Nodes) =:= Node],
    Theirs = [Key || Key <- All, erlmcp_flow_cluster_summary:owner(Key, Nodes) =/= Node],
    lists:sublist(Mine, K) ++ lists:sublist(Theirs, K).

collect(Waiters) ->
    [receive {answer, W, A} -> A after 60000 -> error({no_answer, W}) end || W <- Waiters].
