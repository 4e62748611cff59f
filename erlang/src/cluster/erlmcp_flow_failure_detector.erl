%% @doc The phi accrual failure detector between the nodes of a cluster.
%%
%% Every node's detector joins the group `erlmcp_flow_detectors' of the
%% cluster's `pg' scope and sends a heartbeat to every other node's detector
%% each `failure_detector.heartbeat_interval' ms (the design's
%% `timeouts.heartbeat' sets the same). From the intervals between a peer's
%% heartbeats it computes phi (the arithmetic is the Rust core's: the last
%% 1 000 intervals taken as normally distributed, the deviation never below a
%% quarter of the interval), four times per interval. A peer whose phi passes
%% `phi_threshold' (8.0) once it has `min_samples' (10) intervals is
%% suspected: the cluster takes its agents out of routing within one check,
%% long before distributed Erlang's tick (60 s by default) notices a silent
%% node. Its next heartbeat brings phi down and it is trusted again; the
%% silence it ends is not learned as an interval (an outage learned would
%% make the next shorter ones look normal: `make bench-faults' found a
%% flapping link unseen after a 30 s partition).
%%
%% A steady peer is suspected about 2.4 intervals after its last heartbeat
%% (3 at most when heartbeats were very regular): phi 8 is a chance of one
%% in 10^8 that a heartbeat still comes.
-module(erlmcp_flow_failure_detector).
-behaviour(gen_server).

-export([start_link/0]).
-export([phi/1]).
-export([suspected/0]).
-export([peers/0]).

-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).

-define(GROUP, erlmcp_flow_detectors).
%% Checks of every peer's phi per heartbeat interval.
-define(CHECKS_PER_INTERVAL, 4).

-record(peer, {pid :: pid(),
               phi :: reference(),
               suspected = false :: boolean(),
               %% times this peer became suspected
               suspicions = 0 :: non_neg_integer()}).

-record(state, {scope :: atom(),
                ref :: reference(),
                interval :: pos_integer(),
                threshold :: float(),
                min_samples :: pos_integer(),
                peers = #{} :: #{node() => #peer{}},
                ticks = 0 :: non_neg_integer()}).

%%====================================================================
%% API
%%====================================================================

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc The suspicion level of `Node' now: 0.0 for this node, a node that
%% is not a peer, or a peer with fewer than `min_samples' intervals.
-spec phi(node()) -> float().
phi(Node) ->
    case call({phi, Node}) of
        {error, not_started} -> 0.0;
        Phi -> Phi
    end.

%% @doc The peers suspected now.
-spec suspected() -> [node()].
suspected() ->
    case call(suspected) of
        {error, not_started} -> [];
        Nodes -> Nodes
    end.

%% @doc Every peer with its phi, whether it is suspected, and how many
%% times it became suspected since it was first seen.
-spec peers() -> [#{node := node(), phi := float(), suspected := boolean(),
                    suspicions := non_neg_integer()}].
peers() ->
    case call(peers) of
        {error, not_started} -> [];
        Peers -> Peers
    end.

%%====================================================================
%% gen_server callbacks
%%====================================================================

%% @private
-spec init([]) -> {ok, #state{}}.
init([]) ->
    Scope = erlmcp_flow_config:get(cluster, scope),
    FD = erlmcp_flow_config:get(failure_detector),
    ok = pg:join(Scope, ?GROUP, self()),
    {Ref, Members} = pg:monitor(Scope, ?GROUP),
    State0 = #state{scope = Scope, ref = Ref,
                    interval = maps:get(heartbeat_interval, FD),
                    threshold = float(maps:get(phi_threshold, FD)),
                    min_samples = maps:get(min_samples, FD)},
    State = lists:foldl(fun add_peer/2, State0, Members),
    self() ! tick,
    {ok, State}.

%% @private
-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call({phi, Node}, _From, #state{peers = Peers} = State) ->
    {reply, case Peers of
                #{Node := P} -> phi_now(P, State);
                #{} -> 0.0
            end, State};
handle_call(suspected, _From, #state{peers = Peers} = State) ->
    {reply, lists:sort([N || {N, #peer{suspected = true}} <- maps:to_list(Peers)]), State};
handle_call(peers, _From, #state{peers = Peers} = State) ->
    {reply, [#{node => N, phi => phi_now(P, State), suspected => P#peer.suspected,
                suspicions => P#peer.suspicions}
             || {N, P} <- lists:sort(maps:to_list(Peers))], State};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info(tick, #state{interval = I, ticks = T, peers = Peers} = State) ->
    erlang:send_after(max(1, I div ?CHECKS_PER_INTERVAL), self(), tick),
    T rem ?CHECKS_PER_INTERVAL =:= 0 andalso
        maps:foreach(fun(_N, #peer{pid = Pid}) ->
                             erlang:send(Pid, {flow_heartbeat, node(), self()}, [noconnect])
                     end, Peers),
    {noreply, check(State#state{ticks = T + 1})};
handle_info({flow_heartbeat, Node, Pid}, State0) ->
    #state{peers = Peers} = State = add_peer(Pid, State0),
    case Peers of
        #{Node := #peer{phi = Phi, suspected = Suspected} = P} ->
            %% the silence of a suspected peer was an outage, not one of
            %% its intervals: learned, it would hide the next ones
            ok = case Suspected of
                     true -> erlmcp_flow_nif:phi_resume(Phi, now_ms());
                     false -> erlmcp_flow_nif:phi_heartbeat(Phi, now_ms())
                 end,
            {noreply, State#state{peers = Peers#{Node := verdict(Node, P, State)}}};
        #{} ->
            {noreply, State}
    end;
handle_info({Ref, join, ?GROUP, Pids}, #state{ref = Ref} = State) ->
    {noreply, lists:foldl(fun add_peer/2, State, Pids)};
handle_info({Ref, leave, ?GROUP, Pids}, #state{ref = Ref, peers = Peers} = State) ->
    Peers1 = lists:foldl(fun(Pid, Acc) ->
                                 case Acc of
                                     #{(node(Pid)) := #peer{pid = Pid}} -> maps:remove(node(Pid), Acc);
                                     #{} -> Acc
                                 end
                         end, Peers, Pids),
    {noreply, State#state{peers = Peers1}};
handle_info(_Info, State) ->
    {noreply, State}.

%%====================================================================
%% Internal functions
%%====================================================================

call(Request) ->
    erlmcp_flow_call:call(?MODULE, Request, 5000).

%% A new peer (or a new process of a known peer node): a fresh history.
add_peer(Pid, State) when Pid =:= self(); node(Pid) =:= node() ->
    State;
add_peer(Pid, #state{peers = Peers, interval = I} = State) ->
    Node = node(Pid),
    case Peers of
        #{Node := #peer{pid = Pid}} ->
            State;
        #{} ->
            Phi = erlmcp_flow_nif:phi_new(max(1, I / 4)),
            %% the peer is known from now: its silence from now counts
            ok = erlmcp_flow_nif:phi_heartbeat(Phi, now_ms()),
            State#state{peers = Peers#{Node => #peer{pid = Pid, phi = Phi}}}
    end.

check(#state{peers = Peers} = State) ->
    State#state{peers = maps:map(fun(Node, P) -> verdict(Node, P, State) end, Peers)}.

%% Suspected past the threshold (with enough samples), trusted below it.
verdict(Node, #peer{phi = Phi, suspected = Was, suspicions = K} = P,
        #state{threshold = Th, min_samples = Min}) ->
    {Value, Samples} = erlmcp_flow_nif:phi_value(Phi, now_ms()),
    Now = Samples >= Min andalso Value > Th,
    case {Was, Now} of
        {false, true} ->
            erlmcp_flow_cluster:suspect(Node),
            P#peer{suspected = true, suspicions = K + 1};
        {true, false} ->
            erlmcp_flow_cluster:trust(Node),
            P#peer{suspected = false};
        _ ->
            P
    end.

phi_now(#peer{phi = Phi}, #state{min_samples = Min}) ->
    case erlmcp_flow_nif:phi_value(Phi, now_ms()) of
        {Value, Samples} when Samples >= Min -> Value;
        {_, _} -> 0.0
    end.

%% Milliseconds since the VM started (never negative, as monotonic time may be).
now_ms() ->
    erlang:convert_time_unit(erlang:monotonic_time() - erlang:system_info(start_time),
                             native, millisecond).
