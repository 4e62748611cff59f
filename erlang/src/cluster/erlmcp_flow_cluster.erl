%% @doc Cluster membership: the agents of every node running erlmcp_flow,
%% routable from every other.
%%
%% Each node's cluster process joins the group `erlmcp_flow_nodes' of the
%% OTP `pg' scope `cluster.scope' (default `erlmcp_flow') and watches it.
%% When it sees another node's cluster process join, it sends that process a
%% snapshot of its own node's agents (id, pid, kind, capabilities, weight);
%% afterwards every registration and removal on its node goes to every peer
%% as it happens (the registry tells this process). What a peer sends is
%% mirrored into this node's registry and so into its Rust agent table: a
%% decision stays one local NIF call over local and remote candidates, and
%% a task reaches a remote agent with a plain send over distribution.
%%
%% A peer whose process leaves the group (its node disconnected or stopped
%% erlmcp_flow) takes its agents out of this node's view at once; a node the
%% failure detector suspects leaves routing the same way and comes back, with
%% the agents it announced meanwhile, when it is trusted again. Between two
%% processes messages keep their order, so a snapshot and the changes after
%% it arrive as they were sent.
%%
%% Agent ids are unique cluster-wide: a registration of an id that a
%% reachable node holds is refused (the registry's table has the remote
%% ones). Two nodes apart may both register an id; when they meet again,
%% the agent of the node with the smaller name (Erlang term order of node
%% names) keeps it on every node, and the other node unregisters its own
%% (a warning is logged). A task is always sent to the pid registered under
%% the id it was decided for, so no task reaches an agent under another's id.
%%
%% That is `cluster.mode => mirror', the default. Under `summary' a node
%% sends its peers a summary of its agents per capability set instead
%% (erlmcp_flow_cluster_summary: counts, load and capacity; a changed one at
%% most every `cluster.summary_interval_ms', the load refreshed every
%% `cluster.summary_refresh_ms'), a task goes to a node by those summaries
%% and that node picks the agent (erlmcp_flow_forward), and ids are kept
%% unique by the owners of the id space (erlmcp_flow_cluster_ids): the
%% members are this node and its routable peers, and each change of them
%% hands every owner its ids again once the changes settle
%% (`?RECONCILE_MS').
-module(erlmcp_flow_cluster).
-behaviour(gen_server).

-export([start_link/0]).
-export([start_scope/0]).
-export([nodes/0]).
-export([peers/0]).
-export([suspect/1]).
-export([trust/1]).
-export([unreachable/0]).
-export([leave/0]).
-export([mode/0]).
-export([summaries/0]).
-export([claim/1]).
-export([release/1]).

-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).

-define(GROUP, erlmcp_flow_nodes).
%% summary mode: the members' changes within this long are settled at once
-define(RECONCILE_MS, 50).
%% summary mode: peers up to which a summary goes at the configured pace
-define(SPREAD_PEERS, 7).

-record(state, {scope :: atom(),
                ref :: reference(),
                %% each peer node's cluster process
                peers = #{} :: #{node() => pid()},
                %% what each peer announced: Id => spec
                remote = #{} :: #{node() => #{binary() => erlmcp_flow_registry:spec()}},
                suspected = #{} :: #{node() => true},
                %% nodes seen before whose process left while their node is
                %% disconnected: unreachable until they come back
                lost = #{} :: #{node() => true},
                %% the cluster processes of peers that left (drained): what
                %% they sent before is dropped
                departed = #{} :: #{pid() => true},
                %% this node left (it is draining): it announces nothing and
                %% takes no peer
                left = false :: boolean(),
                mode = mirror :: mirror | summary,
                %% summary mode: what each peer published last
                summaries = #{} :: #{node() => erlmcp_flow_cluster_summary:summary()},
                %% summary mode: this node's summary as last published, and
                %% whether a publication is due (a timer runs)
                published :: erlmcp_flow_cluster_summary:summary() | undefined,
                published_direct = [] :: [erlmcp_flow_registry:spec()],
                %% summary mode: each peer's agents for direct routing
                direct = #{} :: #{node() => [erlmcp_flow_registry:spec()]},
                publish_due = false :: boolean(),
                %% summary mode: the members as claims see them, and whether
                %% the directory's settling is due (a timer runs)
                members = [] :: [node()],
                reconcile_due = false :: boolean()}).

%%====================================================================
%% API
%%====================================================================

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Starts the `pg' scope `cluster.scope' (a child of the cluster's
%% supervisor), or leaves the one already running (another application may
%% have started it).
-spec start_scope() -> {ok, pid()} | ignore | {error, term()}.
start_scope() ->
    case pg:start_link(erlmcp_flow_config:get(cluster, scope)) of
        {error, {already_started, _}} -> ignore;
        Other -> Other
    end.

%% @doc The nodes whose agents this node sees and routes to: this node and
%% every connected peer running erlmcp_flow that is not suspected.
-spec nodes() -> [node()].
nodes() ->
    case call(nodes) of
        {error, not_started} -> [node()];
        Nodes -> Nodes
    end.

%% @doc Every peer node running erlmcp_flow that this node is connected to,
%% suspected ones included.
-spec peers() -> [node()].
peers() ->
    case call(peers) of
        {error, not_started} -> [];
        Nodes -> Nodes
    end.

%% @doc The nodes this node cannot reach now: suspected by the failure
%% detector, or seen before and disconnected since.
-spec unreachable() -> [node()].
unreachable() ->
    case call(unreachable) of
        {error, not_started} -> [];
        Nodes -> Nodes
    end.

%% @doc This node leaves the cluster (it is draining): it leaves the group,
%% and every peer takes its agents out of routing before this returns (a
%% peer that does not answer within 5 s is passed by). It announces nothing
%% more until the application restarts.
-spec leave() -> ok.
leave() ->
    case call(leave) of
        Peers when is_list(Peers) ->
            %% from this process, not the cluster's: two nodes leaving at
            %% once do not wait on each other
            lists:foreach(fun(Peer) -> erlmcp_flow_call:call(Peer, {left, node(), whereis(?MODULE)}, 5000) end,
                          [{?MODULE, Node} || Node <- Peers]);
        {error, not_started} ->
            ok
    end.

%% @doc How this node shares its agents: `mirror' (every node holds every
%% agent) or `summary' (`cluster.mode').
-spec mode() -> mirror | summary.
mode() ->
    case erlmcp_flow_cluster_summary:enabled() of
        true -> summary;
        false -> mirror
    end.

%% @doc In summary mode, the summary of every routable node's agents (this
%% node's included) as this node sees them; `#{}' in mirror mode.
-spec summaries() -> #{node() => erlmcp_flow_cluster_summary:summary()}.
summaries() ->
    erlmcp_flow_cluster_summary:view().

%% @private Summary mode: claims `Id' for this node (before registering it).
-spec claim(binary()) -> ok | {error, already_registered}.
claim(Id) ->
    erlmcp_flow_cluster_ids:claim(Id).

%% @private Summary mode: gives `Id' back (its registration was refused).
-spec release(binary()) -> ok.
release(Id) ->
    erlmcp_flow_cluster_ids:release(Id).

%% @private The failure detector suspects `Node': its agents leave routing.
-spec suspect(node()) -> ok.
suspect(Node) ->
    gen_server:cast(?MODULE, {suspect, Node}).

%% @private The failure detector trusts `Node' again: its agents come back.
-spec trust(node()) -> ok.
trust(Node) ->
    gen_server:cast(?MODULE, {trust, Node}).

%%====================================================================
%% gen_server callbacks
%%====================================================================

%% @private
-spec init([]) -> {ok, #state{}}.
init([]) ->
    Scope = erlmcp_flow_config:get(cluster, scope),
    Mode = erlmcp_flow_config:get(cluster, mode),
    ok = case Mode of
             summary ->
                 ok = erlmcp_flow_cluster_summary:new(),
                 ok = erlmcp_flow_cluster_ids:new(),
                 ok = erlmcp_flow_cluster_summary:set_members([node()]),
                 erlmcp_flow_registry:set_claim({fun ?MODULE:claim/1, fun ?MODULE:release/1});
             mirror ->
                 erlmcp_flow_registry:set_claim(undefined)
         end,
    ok = pg:join(Scope, ?GROUP, self()),
    {Ref, Members} = pg:monitor(Scope, ?GROUP),
    %% this node's changes from now on; the snapshots below read the table
    ok = erlmcp_flow_registry:subscribe(self()),
    State0 = #state{scope = Scope, ref = Ref, mode = Mode, members = [node()]},
    State1 = case Mode of
                 summary -> publish(refresh_timer(State0));
                 mirror -> State0
             end,
    State = lists:foldl(fun add_peer/2, State1, Members),
    {ok, members_changed(State)}.

%% @private
-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call(nodes, _From, #state{peers = Peers, suspected = S} = State) ->
    {reply, lists:usort([node() | [N || N <- maps:keys(Peers), not is_map_key(N, S)]]), State};
handle_call(peers, _From, #state{peers = Peers} = State) ->
    {reply, lists:sort(maps:keys(Peers)), State};
handle_call(unreachable, _From, #state{suspected = S, lost = L} = State) ->
    {reply, lists:usort(maps:keys(S) ++ maps:keys(L)), State};
handle_call(leave, _From, #state{left = true} = State) ->
    {reply, [], State};
handle_call(leave, _From, #state{scope = Scope, peers = Peers} = State) ->
    ok = pg:leave(Scope, ?GROUP, self()),
    {reply, maps:keys(Peers), State#state{left = true}};
handle_call({left, Node, Pid}, _From, #state{departed = D} = State) when is_pid(Pid) ->
    logger:notice("erlmcp_flow: node ~ts left the cluster (draining): its agents leave routing",
                  [Node]),
    State1 = case State#state.peers of
                 #{Node := Peer} -> peer_left(Peer, State);
                 #{} -> State
             end,
    ok = hide(Node, State1),
    {reply, ok, members_changed(State1#state{departed = D#{Pid => true},
                                             lost = maps:remove(Node, State1#state.lost)})};
handle_call({claim, Id, Node}, _From, #state{mode = summary} = State) when is_binary(Id) ->
    Reply = case erlmcp_flow_cluster_ids:take(Id, Node, erlmcp_flow_cluster_summary:members()) of
                ok -> ok;
                {conflict, _} -> {error, already_registered}
            end,
    {reply, Reply, State};
handle_call({claim, _Id, _Node}, _From, State) ->
    {reply, ok, State};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast({suspect, Node}, #state{suspected = S} = State) when is_map_key(Node, S) ->
    {noreply, State};
handle_cast({suspect, Node}, #state{suspected = S} = State) ->
    logger:warning("erlmcp_flow: node ~ts is suspected (phi past the threshold): "
                   "its agents leave routing", [Node]),
    ok = hide(Node, State),
    {noreply, members_changed(State#state{suspected = S#{Node => true}})};
handle_cast({trust, Node}, #state{suspected = S} = State)
  when is_map_key(Node, S) ->
    logger:notice("erlmcp_flow: node ~ts is trusted again: its agents come back", [Node]),
    State1 = State#state{suspected = maps:remove(Node, S)},
    ok = show(Node, State1),
    {noreply, members_changed(State1)};
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info({Ref, join, ?GROUP, Pids}, #state{ref = Ref} = State) ->
    {noreply, members_changed(lists:foldl(fun add_peer/2, State, Pids))};
handle_info({Ref, leave, ?GROUP, Pids}, #state{ref = Ref} = State) ->
    {noreply, members_changed(lists:foldl(fun peer_left/2, State, Pids))};
handle_info({flow_cluster, publish}, #state{mode = summary} = State) ->
    {noreply, publish(State#state{publish_due = false})};
handle_info({flow_cluster, refresh}, #state{mode = summary} = State) ->
    {noreply, publish(refresh_timer(State))};
handle_info({flow_cluster, reconcile}, #state{mode = summary} = State) ->
    {noreply, reconcile(State#state{reconcile_due = false})};
handle_info(Msg, #state{left = true} = State) when element(1, Msg) =:= flow_cluster ->
    {noreply, State};
handle_info({flow_cluster, snapshot, _Node, Pid, _Specs}, #state{departed = D} = State)
  when is_map_key(Pid, D) ->
    {noreply, State};
handle_info({flow_cluster, summary, _Node, Pid, _Summary, _Direct}, #state{departed = D} = State)
  when is_map_key(Pid, D) ->
    {noreply, State};
handle_info({flow_cluster, summary, Node, Pid, Summary, Direct}, #state{mode = summary} = State0)
  when node(Pid) =:= Node, is_map(Summary) ->
    State = add_peer(Pid, State0),
    State1 = State#state{summaries = (State#state.summaries)#{Node => Summary}},
    State2 = case Direct of
                 unchanged -> State1;
                 _ when is_list(Direct) -> direct_changed(Node, Direct, State1)
             end,
    ok = show_summary(Node, State2),
    {noreply, members_changed(State2)};
handle_info({flow_cluster, claims, Node, Ids}, #state{mode = summary} = State) when is_list(Ids) ->
    Losers = erlmcp_flow_cluster_ids:settle(Node, Ids, erlmcp_flow_cluster_summary:members()),
    lists:foreach(fun({Loser, Id, Winner}) -> lost_id(Loser, Id, Winner) end, Losers),
    {noreply, State};
handle_info({flow_cluster, releases, Node, Ids}, #state{mode = summary} = State) when is_list(Ids) ->
    ok = erlmcp_flow_cluster_ids:released(Node, Ids),
    {noreply, State};
handle_info({flow_cluster, lost_id, Id, Winner}, State) ->
    _ = case erlmcp_flow_registry:lookup_pid(Id) of
            Pid when is_pid(Pid), node(Pid) =:= node() ->
                logger:warning("erlmcp_flow: agent id ~ts was registered on ~ts and on ~ts while "
                               "they were apart; ~ts keeps it (the smaller node name)",
                               [Id, node(), Winner, Winner]),
                erlmcp_flow_registry:unregister_agent(Id);
            _ ->
                ok
        end,
    {noreply, State};
handle_info({flow_cluster, snapshot, Node, Pid, Specs}, State0) ->
    %% a peer may speak before its join reaches this process
    State = add_peer(Pid, State0),
    Old = maps:get(Node, State#state.remote, #{}),
    New = maps:from_list([{element(1, S), S} || S <- Specs]),
    Gone = [{Id, element(2, S)} || {Id, S} <- maps:to_list(Old),
                                   maps:get(Id, New, none) =/= S],
    State1 = State#state{remote = (State#state.remote)#{Node => New}},
    _ = routable(Node, State1) andalso begin
                                      _ = erlmcp_flow_registry:unmirror(Node, Gone),
                                      mirror(Node, Specs)
                                  end,
    {noreply, State1};
handle_info({flow_cluster, added, Node, Specs}, #state{remote = Remote} = State) ->
    Known = maps:get(Node, Remote, #{}),
    State1 = State#state{remote = Remote#{Node => lists:foldl(fun(S, M) -> M#{element(1, S) => S} end,
                                                                  Known, Specs)}},
    _ = routable(Node, State1) andalso mirror(Node, Specs),
    {noreply, State1};
handle_info({flow_cluster, removed, Node, IdPids}, #state{remote = Remote} = State) ->
    Known = maps:get(Node, Remote, #{}),
    Known1 = lists:foldl(fun({Id, Pid}, M) ->
                                 case M of
                                     #{Id := {Id, Pid, _, _, _}} -> maps:remove(Id, M);
                                     #{} -> M
                                 end
                         end, Known, IdPids),
    _ = erlmcp_flow_registry:unmirror(Node, IdPids),
    {noreply, State#state{remote = Remote#{Node => Known1}}};
handle_info({registry, _, _}, #state{left = true} = State) ->
    {noreply, State};
handle_info({registry, added, _Specs}, #state{mode = summary} = State) ->
    {noreply, publish_soon(State)};
handle_info({registry, removed, IdPids}, #state{mode = summary} = State) ->
    Members = erlmcp_flow_cluster_summary:members(),
    maps:foreach(fun(Owner, Ids) -> to_cluster(Owner, {flow_cluster, releases, node(), Ids}) end,
                 erlmcp_flow_cluster_ids:by_owner([Id || {Id, _} <- IdPids], Members)),
    {noreply, publish_soon(State)};
handle_info({registry, added, Specs}, #state{peers = Peers} = State) ->
    broadcast(Peers, {flow_cluster, added, node(), Specs}),
    {noreply, State};
handle_info({registry, removed, IdPids}, #state{peers = Peers} = State) ->
    broadcast(Peers, {flow_cluster, removed, node(), IdPids}),
    {noreply, State};
handle_info(_Info, State) ->
    {noreply, State}.

%%====================================================================
%% Internal functions
%%====================================================================

call(Request) ->
    erlmcp_flow_call:call(?MODULE, Request, 5000).

%% A peer's cluster process: it gets this node's agents now.
add_peer(Pid, State) when Pid =:= self(); node(Pid) =:= node() ->
    State;
add_peer(_Pid, #state{left = true} = State) ->
    State;
add_peer(Pid, #state{departed = D} = State) when is_map_key(Pid, D) ->
    State;
add_peer(Pid, #state{peers = Peers, lost = Lost} = State) ->
    Node = node(Pid),
    case Peers of
        #{Node := Pid} ->
            State;
        #{} ->
            Pid ! case State#state.mode of
                      mirror -> {flow_cluster, snapshot, node(), self(),
                                 erlmcp_flow_registry:local_agents()};
                      summary -> {flow_cluster, summary, node(), self(), State#state.published,
                                  State#state.published_direct}
                  end,
            State#state{peers = Peers#{Node => Pid}, lost = maps:remove(Node, Lost)}
    end.

%% A peer's process left the group: its node's agents leave this node's view.
peer_left(Pid, #state{peers = Peers, remote = Remote, lost = Lost, suspected = S} = State) ->
    Node = node(Pid),
    case Peers of
        #{Node := Pid} ->
            ok = hide(Node, State),
            Connected = lists:member(Node, erlang:nodes()),
            Connected orelse logger:warning("erlmcp_flow: node ~ts is unreachable: its agents "
                                            "leave routing", [Node]),
            State#state{peers = maps:remove(Node, Peers), remote = maps:remove(Node, Remote),
                        summaries = maps:remove(Node, State#state.summaries),
                        direct = maps:remove(Node, State#state.direct),
                        suspected = maps:remove(Node, S),
                        lost = case Connected of
                                   true -> Lost;
                                   false -> Lost#{Node => true}
                               end};
        #{} ->
            State
    end.

%% Mirrors a node's agents. The Byzantine detector (above this module: it
%% reads the partitions from here) is told with a message, so that a
%% blacklisted node's new agents are passed by as soon as they are known.
mirror(Node, Specs) ->
    _ = erlmcp_flow_registry:mirror(Node, Specs),
    case whereis(erlmcp_flow_byzantine_detector) of
        undefined -> ok;
        Detector -> Detector ! {agents_mirrored, Node}, ok
    end.

routable(Node, #state{peers = Peers, suspected = S}) ->
    is_map_key(Node, Peers) andalso not is_map_key(Node, S).

broadcast(Peers, Msg) ->
    maps:foreach(fun(_Node, Pid) -> erlang:send(Pid, Msg, [noconnect]) end, Peers).

%% A node leaves this node's routing (its process left, it is suspected or
%% it drains).
hide(Node, #state{mode = mirror}) ->
    _ = erlmcp_flow_registry:unmirror(Node, all),
    ok;
hide(Node, #state{mode = summary}) ->
    _ = erlmcp_flow_registry:unmirror(Node, all),
    erlmcp_flow_cluster_summary:delete(Node).

%% A routable node's agents (back) in this node's routing.
show(Node, #state{mode = mirror, remote = Remote}) ->
    _ = mirror(Node, maps:values(maps:get(Node, Remote, #{}))),
    ok;
show(Node, #state{mode = summary, direct = Direct} = State) ->
    _ = routable(Node, State) andalso
        mirror(Node, erlmcp_flow_cluster_summary:direct(maps:get(Node, Direct, []))),
    show_summary(Node, State).

%% A routable peer's summary (back) in this node's view.
show_summary(Node, #state{summaries = Summaries} = State) ->
    case Summaries of
        #{Node := Summary} when is_map(Summary) ->
            case routable(Node, State) of
                true -> erlmcp_flow_cluster_summary:put(Node, Summary);
                false -> ok
            end;
        #{} ->
            ok
    end.

%% Summary mode: a peer named other agents for direct routing: those
%% gone leave this node's table, the new ones join it.
direct_changed(Node, Specs, #state{direct = Direct} = State) ->
    Old = maps:get(Node, Direct, []),
    New = [S || {_, Pid, agent, _, _} = S <- Specs, is_pid(Pid), node(Pid) =:= Node],
    _ = case routable(Node, State) of
            true ->
                _ = erlmcp_flow_registry:unmirror(Node, [{Id, Pid} || {Id, Pid, _, _, _} <- Old -- New]),
                mirror(Node, erlmcp_flow_cluster_summary:direct(New -- Old));
            false ->
                ok
        end,
    State#state{direct = Direct#{Node => New}}.

%% Summary mode: the members are this node and its routable peers; a
%% change is seen by claims at once, and the directory is settled once the
%% changes stop for ?RECONCILE_MS.
members_changed(#state{mode = mirror} = State) ->
    State;
members_changed(#state{peers = Peers, suspected = S, members = Old} = State) ->
    case lists:usort([node() | [N || N <- maps:keys(Peers), not is_map_key(N, S)]]) of
        Old ->
            State;
        New ->
            ok = erlmcp_flow_cluster_summary:set_members(New),
            State1 = State#state{members = New},
            case State1#state.reconcile_due of
                true ->
                    State1;
                false ->
                    _ = erlang:send_after(?RECONCILE_MS, self(), {flow_cluster, reconcile}),
                    State1#state{reconcile_due = true}
            end
    end.

%% Summary mode: every owner is handed the ids of this node it owns, and
%% drops those it no longer keeps.
reconcile(#state{left = true} = State) ->
    State;
reconcile(State) ->
    Members = erlmcp_flow_cluster_summary:members(),
    ok = erlmcp_flow_cluster_ids:prune(Members),
    Ids = [Id || {Id, _, _, _, _} <- erlmcp_flow_registry:local_agents()],
    maps:foreach(fun(Owner, Owned) -> to_cluster(Owner, {flow_cluster, claims, node(), Owned}) end,
                 erlmcp_flow_cluster_ids:by_owner(Ids, Members)),
    State.

%% Summary mode: the loser of an id held twice unregisters its own.
lost_id(Loser, Id, Winner) ->
    to_cluster(Loser, {flow_cluster, lost_id, Id, Winner}).

to_cluster(Node, Msg) ->
    _ = erlang:send({?MODULE, Node}, Msg, [noconnect]),
    ok.

%% Summary mode: this node's summary, published to every peer when it
%% changed.
publish(#state{left = true} = State) ->
    State;
publish(#state{published = Old, published_direct = OldDirect, peers = Peers} = State) ->
    case erlmcp_flow_cluster_summary:local(OldDirect) of
        {Old, OldDirect} ->
            State;
        {New, Direct} ->
            ok = erlmcp_flow_cluster_summary:put(node(), New),
            %% the agents for direct routing go only when they changed
            broadcast(Peers, {flow_cluster, summary, node(), self(), New,
                              case Direct of
                                  OldDirect -> unchanged;
                                  _ -> Direct
                              end}),
            State#state{published = New, published_direct = Direct}
    end.

%% A change of this node's agents is published within
%% `cluster.summary_interval_ms' (changes meanwhile go with it), stretched
%% past ?SPREAD_PEERS peers in proportion to them: every node takes in at
%% most about ?SPREAD_PEERS summaries per interval, however many nodes
%% there are.
publish_soon(#state{publish_due = true} = State) ->
    State;
publish_soon(State) ->
    _ = erlang:send_after(spread(summary_interval_ms, State), self(), {flow_cluster, publish}),
    State#state{publish_due = true}.

refresh_timer(State) ->
    _ = erlang:send_after(spread(summary_refresh_ms, State), self(), {flow_cluster, refresh}),
    State.

spread(Key, #state{peers = Peers}) ->
    erlmcp_flow_config:get(cluster, Key) * max(1, map_size(Peers)) div min(?SPREAD_PEERS, max(1, map_size(Peers))).
