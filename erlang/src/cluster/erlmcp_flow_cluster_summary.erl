%% @private
%% @doc The view of the cluster in summary mode (`cluster.mode => summary'):
%% what each node publishes about its agents instead of the agents, the
%% nodes that own the id space, and the first level of routing, the choice
%% of a node.
%%
%% A node's summary groups its agents by capability set: how many hold each
%% set, with the node's agents, leases in flight and capacity (agents times
%% `circuit_breaker.max_concurrent'). Its size grows with the number of
%% distinct capability sets, not with the agents. It also names up to
%% `cluster.direct_agents' of its agents (those named before while they
%% stay, then the first by id: the list changes only when one leaves), which
%% its peers mirror, each with the node's own
%% capability (`node_capability/1'), and route to directly while they have
%% room (see erlmcp_flow_forward). The table holds one row per routable
%% node (this one included) and the members: every process reads it, only
%% the cluster process writes it.
%%
%% A task goes to a node holding agents with all its capabilities, chosen
%% at random in proportion to those agents' count times the node's free
%% share (at least 5 %), so a node at capacity gets few new tasks and the
%% load spreads as it does over mirrored agents; a task routed by key
%% (`consistent_hash') goes to the node the key hashes to among those
%% nodes (rendezvous hashing), so that node's ring keeps it sticky. The
%% owner of an agent id is the member it hashes to the same way.
-module(erlmcp_flow_cluster_summary).

-export([new/0]).
-export([enabled/0]).
-export([local/1]).
-export([put/2]).
-export([delete/1]).
-export([set_members/1]).
-export([members/0]).
-export([owner/1]).
-export([owner/2]).
-export([view/0]).
-export([choose/3]).
-export([nodes_for/2]).
-export([node_capability/1]).
-export([direct/1]).

-export_type([summary/0]).

-define(TAB, erlmcp_flow_cluster_summaries).
%% {Caps, Generation, Nodes, Cumulative}: the choice among nodes of tasks
%% needing Caps, worked out once per change of the view (every caller may
%% write it; at most ?MAX_CHOICES kept)
-define(CHOICES, erlmcp_flow_cluster_choices).
-define(MAX_CHOICES, 4096).
%% a node at capacity still gets this share of its weight
-define(MIN_FREE, 0.05).

-type summary() :: #{sets := [{[erlmcp_flow:capability()], pos_integer()}],
                     agents := non_neg_integer(), in_flight := non_neg_integer(),
                     capacity := non_neg_integer(), direct := non_neg_integer()}.

%% @doc Creates the view's table, owned by the calling process (the
%% cluster's).
-spec new() -> ok.
new() ->
    _ = ets:new(?TAB, [named_table, protected, set, {read_concurrency, true}]),
    true = ets:insert(?TAB, {generation, 0}),
    _ = ets:new(?CHOICES, [named_table, public, set, {read_concurrency, true},
                           {write_concurrency, true}]),
    ok.

%% @doc Whether this node routes in two levels (its cluster runs in summary
%% mode).
-spec enabled() -> boolean().
enabled() ->
    ets:whereis(?TAB) =/= undefined.

%% @doc This node's summary, from its registry, and the agents it names for
%% direct routing: those of `Named' still registered, then others by id.
-spec local([erlmcp_flow_registry:spec()]) -> {summary(), [erlmcp_flow_registry:spec()]}.
local(Named) ->
    Agents = erlmcp_flow_registry:local_agents(),
    K = erlmcp_flow_config:get(cluster, direct_agents),
    Plain = lists:sort([S || {_, _, agent, _, _} = S <- Agents]),
    Kept = lists:sublist(ordsets:intersection(lists:sort(Named), Plain), K),
    Direct = lists:sort(Kept ++ lists:sublist(ordsets:subtract(Plain, Kept), K - length(Kept))),
    Sets = lists:foldl(fun({_Id, _Pid, _Kind, Caps, _W}, M) ->
                               maps:update_with(Caps, fun(N) -> N + 1 end, 1, M)
                       end, #{}, Agents),
    InFlight = case erlmcp_flow_registry:router_if_running() of
                   undefined -> 0;
                   Router -> in_flight(Router)
               end,
    {#{sets => lists:sort(maps:to_list(Sets)), agents => length(Agents), in_flight => InFlight,
       capacity => length(Agents) * erlmcp_flow_config:get(circuit_breaker, max_concurrent),
       direct => length(Direct)},
     Direct}.

%% @doc The capability a peer's directly routed agents hold here besides
%% their own: a task for that node asks for it.
-spec node_capability(node()) -> binary().
node_capability(Node) ->
    <<0, "erlmcp_flow/node/", (atom_to_binary(Node))/binary>>.

%% @doc A peer's agents named for direct routing, as this node mirrors them.
-spec direct([erlmcp_flow_registry:spec()]) -> [erlmcp_flow_registry:spec()].
direct([]) ->
    [];
direct([{_, Pid, _, _, _} | _] = Specs) ->
    Cap = node_capability(node(Pid)),
    [{Id, P, Kind, lists:usort([Cap | Caps]), W} || {Id, P, Kind, Caps, W} <- Specs].

in_flight(Router) ->
    case erlmcp_flow_nif:router_stats(Router) of
        {ok, #{in_flight := F}} -> F;
        _ -> 0
    end.

%% @doc Sets `Node''s row.
-spec put(node(), summary()) -> ok.
put(Node, Summary) ->
    true = ets:insert(?TAB, {{node, Node}, Summary}),
    changed().

%% @doc Takes `Node''s row out: its agents leave routing.
-spec delete(node()) -> ok.
delete(Node) ->
    true = ets:delete(?TAB, {node, Node}),
    changed().

%% The choices worked out before are stale.
changed() ->
    _ = ets:update_counter(?TAB, generation, 1),
    ok.

%% @doc Sets the nodes that own the id space (this one and every routable
%% peer).
-spec set_members([node()]) -> ok.
set_members(Nodes) ->
    true = ets:insert(?TAB, {members, lists:usort(Nodes)}),
    ok.

%% @doc The nodes that own the id space (`[]' outside summary mode).
-spec members() -> [node()].
members() ->
    try ets:lookup(?TAB, members) of
        [{members, Nodes}] -> Nodes;
        [] -> []
    catch
        error:badarg -> []
    end.

%% @doc The member owning `Id', or `undefined' outside summary mode.
-spec owner(binary()) -> node() | undefined.
owner(Id) ->
    owner(Id, members()).

%% @doc The member of `Nodes' owning `Key' (rendezvous hashing: the highest
%% hash of the key with the node), `undefined' for none.
-spec owner(term(), [node()]) -> node() | undefined.
owner(_Key, []) ->
    undefined;
owner(Key, Nodes) ->
    {_, Node} = lists:max([{erlang:phash2({Key, N}, 1 bsl 32), N} || N <- Nodes]),
    Node.

%% @doc Every routable node's summary.
-spec view() -> #{node() => summary()}.
view() ->
    try ets:select(?TAB, [{{{node, '$1'}, '$2'}, [], [{{'$1', '$2'}}]}]) of
        Rows -> maps:from_list(Rows)
    catch
        error:badarg -> #{}
    end.

%% @doc The node for a task needing `Caps' (sorted, no duplicates), not one
%% of `Exclude'; by `Key' when the task is routed by key. With the node,
%% the capabilities that pick the agents it named for direct routing
%% (`none' when it named none). `none' when no routable node holds such
%% agents.
-spec choose([erlmcp_flow:capability()], [node()], binary() | undefined) ->
          {ok, node(), [erlmcp_flow:capability()] | none} | none.
choose(Caps, [], undefined) ->
    %% the common case: the weights worked out once per change of the view
    [{generation, G}] = ets:lookup(?TAB, generation),
    case ets:lookup(?CHOICES, Caps) of
        [{_, G, Nodes, Cumulative}] ->
            pick_cumulative(Nodes, Cumulative);
        _ ->
            {Nodes, Cumulative} = choice(Caps, []),
            _ = ets:info(?CHOICES, size) < ?MAX_CHOICES orelse ets:delete_all_objects(?CHOICES),
            true = ets:insert(?CHOICES, {Caps, G, Nodes, Cumulative}),
            pick_cumulative(Nodes, Cumulative)
    end;
choose(Caps, Exclude, Key) ->
    case choice(Caps, Exclude) of
        {{}, _} -> none;
        {Nodes, _} when is_binary(Key) ->
            Node = owner(Key, [N || {N, _} <- tuple_to_list(Nodes)]),
            {ok, Node, element(2, lists:keyfind(Node, 1, tuple_to_list(Nodes)))};
        {Nodes, Cumulative} -> pick_cumulative(Nodes, Cumulative)
    end.

%% The nodes for `Caps' with their direct capabilities, and their
%% cumulative weights.
choice(Caps, Exclude) ->
    View = view(),
    Weighted = nodes_for(Caps, Exclude),
    Nodes = [{N, case View of
                     #{N := #{direct := D}} when D > 0, N =/= node() ->
                         lists:usort([node_capability(N) | Caps]);
                     #{} ->
                         none
                 end} || {N, _} <- Weighted],
    {_, Cumulative} = lists:foldl(fun({_, W}, {Sum, Acc}) -> {Sum + W, [Sum + W | Acc]} end,
                                  {0, []}, Weighted),
    {list_to_tuple(Nodes), list_to_tuple(lists:reverse(Cumulative))}.

pick_cumulative({}, _) ->
    none;
pick_cumulative({{Node, Direct}}, _) ->
    {ok, Node, Direct};
pick_cumulative(Nodes, Cumulative) ->
    X = rand:uniform() * element(tuple_size(Cumulative), Cumulative),
    {Node, Direct} = element(search(X, Cumulative, 1, tuple_size(Cumulative)), Nodes),
    {ok, Node, Direct}.

%% The first index whose cumulative weight reaches `X' (binary search).
search(_X, _C, Lo, Lo) -> Lo;
search(X, C, Lo, Hi) ->
    Mid = (Lo + Hi) div 2,
    case X =< element(Mid, C) of
        true -> search(X, C, Lo, Mid);
        false -> search(X, C, Mid + 1, Hi)
    end.

%% @doc The routable nodes holding agents with every one of `Caps', not in
%% `Exclude', each with its weight (the count of those agents times the
%% node's free share).
-spec nodes_for([erlmcp_flow:capability()], [node()]) -> [{node(), float()}].
nodes_for(Caps, Exclude) ->
    [{Node, W} || {Node, S} <- maps:to_list(view()), not lists:member(Node, Exclude),
                  W <- [weight(S, Caps)], W > 0].

weight(#{sets := Sets, in_flight := F, capacity := C}, Caps) ->
    case lists:sum([N || {Set, N} <- Sets, ordsets:is_subset(Caps, Set)]) of
        0 -> 0;
        Count when C > 0 -> Count * max(?MIN_FREE, 1 - F / C);
        Count -> Count * ?MIN_FREE
    end.

