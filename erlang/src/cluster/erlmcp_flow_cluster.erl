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

-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).

-define(GROUP, erlmcp_flow_nodes).

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
                left = false :: boolean()}).

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
    ok = pg:join(Scope, ?GROUP, self()),
    {Ref, Members} = pg:monitor(Scope, ?GROUP),
    %% this node's changes from now on; the snapshots below read the table
    ok = erlmcp_flow_registry:subscribe(self()),
    State = lists:foldl(fun add_peer/2, #state{scope = Scope, ref = Ref}, Members),
    {ok, State}.

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
    _ = erlmcp_flow_registry:unmirror(Node, all),
    {reply, ok, State1#state{departed = D#{Pid => true},
                             lost = maps:remove(Node, State1#state.lost)}};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast({suspect, Node}, #state{suspected = S} = State) when is_map_key(Node, S) ->
    {noreply, State};
handle_cast({suspect, Node}, #state{suspected = S} = State) ->
    logger:warning("erlmcp_flow: node ~ts is suspected (phi past the threshold): "
                   "its agents leave routing", [Node]),
    _ = erlmcp_flow_registry:unmirror(Node, all),
    {noreply, State#state{suspected = S#{Node => true}}};
handle_cast({trust, Node}, #state{suspected = S, remote = Remote} = State)
  when is_map_key(Node, S) ->
    logger:notice("erlmcp_flow: node ~ts is trusted again: its agents come back", [Node]),
    State1 = State#state{suspected = maps:remove(Node, S)},
    _ = mirror(Node, maps:values(maps:get(Node, Remote, #{}))),
    {noreply, State1};
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info({Ref, join, ?GROUP, Pids}, #state{ref = Ref} = State) ->
    {noreply, lists:foldl(fun add_peer/2, State, Pids)};
handle_info({Ref, leave, ?GROUP, Pids}, #state{ref = Ref} = State) ->
    {noreply, lists:foldl(fun peer_left/2, State, Pids)};
handle_info(Msg, #state{left = true} = State) when element(1, Msg) =:= flow_cluster ->
    {noreply, State};
handle_info({flow_cluster, snapshot, _Node, Pid, _Specs}, #state{departed = D} = State)
  when is_map_key(Pid, D) ->
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
            Pid ! {flow_cluster, snapshot, node(), self(), erlmcp_flow_registry:local_agents()},
            State#state{peers = Peers#{Node => Pid}, lost = maps:remove(Node, Lost)}
    end.

%% A peer's process left the group: its node's agents leave this node's view.
peer_left(Pid, #state{peers = Peers, remote = Remote, lost = Lost, suspected = S} = State) ->
    Node = node(Pid),
    case Peers of
        #{Node := Pid} ->
            _ = erlmcp_flow_registry:unmirror(Node, all),
            Connected = lists:member(Node, erlang:nodes()),
            Connected orelse logger:warning("erlmcp_flow: node ~ts is unreachable: its agents "
                                            "leave routing", [Node]),
            State#state{peers = maps:remove(Node, Peers), remote = maps:remove(Node, Remote),
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
