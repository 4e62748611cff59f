%% @doc What this node cannot trust or reach: partitions, and the agents and
%% nodes that lied in quorum votes.
%%
%% It loads the cluster's secret (`byzantine.hmac_secret', at least 16
%% bytes, or `byzantine.hmac_secret_file') into the Rust core, where it stays:
%% the process holds only an opaque key resource, the published
%% configuration says `redacted', and no log line, error or crash report of
%% the project shows it. Without a secret, quorum tasks get `{error,
%% {byzantine, no_secret}}' and the rest of routing works.
%%
%% Reputation: after each decided quorum task, every verified vote that
%% agreed with the accepted answer counts as honest for its agent, every
%% other verified vote as dishonest; every vote refused (bad signature,
%% outside the replay window, a nonce or an attempt seen before) counts
%% against the node that sent it. An agent with more than
%% `byzantine.blacklist_threshold' (0.3) dishonest votes over at least
%% `byzantine.min_votes' (10) is blacklisted, and so is a node with as many
%% refused votes: it leaves every candidate set of every strategy on this
%% node until `unblacklist/1' or `byzantine.blacklist_ttl_ms'. A warning is
%% logged for each.
-module(erlmcp_flow_byzantine_detector).
-behaviour(gen_server).

-export([start_link/0]).
-export([detect_partitions/0]).
-export([is_blacklisted/1]).
-export([unblacklist/1]).
-export([reputation/1]).
-export([blacklisted/0]).
-export([excluded/0]).
-export([key/0]).
-export([replay_guard/0]).
-export([record/2]).
-export([sign/2]).
-export([verify/3]).

-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).
-export([terminate/2]).
-export([format_status/1]).

-define(KEY, {?MODULE, key}).
-define(GUARD, {?MODULE, guard}).
-define(EXCLUDED, {?MODULE, excluded}).
-define(TABLE, erlmcp_flow_blacklist).
%% Votes whose answer is larger than this are signed and verified on a
%% dirty scheduler (SHA-256 over the answer grows with it).
-define(DIRTY_ABOVE, 65536).

-record(state, {threshold :: float(),
                min_votes :: pos_integer(),
                ttl :: timeout(),
                %% AgentId => {Honest, Dishonest}
                agents = #{} :: #{binary() => {non_neg_integer(), non_neg_integer()}},
                %% Node => {Accepted, Refused}
                nodes = #{} :: #{node() => {non_neg_integer(), non_neg_integer()}}}).

%%====================================================================
%% API
%%====================================================================

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc The nodes this node cannot reach now: suspected by the failure
%% detector, or seen in the cluster before and disconnected since.
-spec detect_partitions() -> [node()].
detect_partitions() ->
    %% the cluster process keeps both: the failure detector tells it whom it
    %% suspects, pg whom it lost
    erlmcp_flow_cluster:unreachable().

%% @doc Whether an agent (by id) or a node is blacklisted on this node.
-spec is_blacklisted(binary() | node()) -> boolean().
is_blacklisted(Who) ->
    try ets:lookup(?TABLE, Who) of
        [{Who, Until}] -> Until =:= infinity orelse Until > now_ms();
        [] -> false
    catch
        error:badarg -> false
    end.

%% @doc Lifts a blacklisting (and forgets the record that caused it).
-spec unblacklist(binary() | node()) -> ok.
unblacklist(Who) ->
    call({unblacklist, Who}).

%% @doc An agent's votes in decided quorum tasks on this node.
-spec reputation(binary()) -> #{honest := non_neg_integer(), dishonest := non_neg_integer(),
                                blacklisted := boolean()}.
reputation(AgentId) ->
    {H, D} = case call({reputation, AgentId}) of
                 {Honest, Dishonest} = HD when is_integer(Honest), is_integer(Dishonest) -> HD;
                 _ -> {0, 0}  % not started: {error, not_started}
             end,
    #{honest => H, dishonest => D, blacklisted => is_blacklisted(AgentId)}.

%% @doc Every blacklisted agent id and node.
-spec blacklisted() -> [binary() | node()].
blacklisted() ->
    try [W || {W, Until} <- ets:tab2list(?TABLE), Until =:= infinity orelse Until > now_ms()]
    catch error:badarg -> []
    end.

%% @private The agent ids every decision on this node passes by: the
%% blacklisted agents and the agents of blacklisted nodes.
-spec excluded() -> [binary()].
excluded() ->
    persistent_term:get(?EXCLUDED, []).

%% @private The key resource, or `undefined' without a secret.
-spec key() -> reference() | undefined.
key() ->
    persistent_term:get(?KEY, undefined).

%% @private The node's replay guard (a resource).
-spec replay_guard() -> reference() | undefined.
replay_guard() ->
    persistent_term:get(?GUARD, undefined).

%% @private The signature of a vote under `Key' (see key/0).
-spec sign(reference(), erlmcp_flow_nif:vote()) -> binary() | {error, {badarg, atom()}}.
sign(Key, {_, _, _, _, Answer, _, _} = Vote) when is_binary(Answer), byte_size(Answer) > ?DIRTY_ABOVE ->
    erlmcp_flow_nif:vote_sign_dirty(Key, Vote);
sign(Key, Vote) ->
    case erlmcp_flow_nif:vote_sign(Key, Vote) of
        {error, {dirty_only, _}} -> erlmcp_flow_nif:vote_sign_dirty(Key, Vote);
        Signature -> Signature
    end.

%% @private Whether `Signature' is the vote's under `Key'.
-spec verify(reference() | undefined, term(), term()) ->
          ok | {error, bad_signature | {badarg, atom()}}.
verify(Key, {_, _, _, _, Answer, _, _} = Vote, Signature)
  when is_binary(Answer), byte_size(Answer) > ?DIRTY_ABOVE ->
    erlmcp_flow_nif:vote_verify_dirty(Key, Vote, Signature);
verify(Key, Vote, Signature) ->
    case erlmcp_flow_nif:vote_verify(Key, Vote, Signature) of
        {error, {dirty_only, _}} -> erlmcp_flow_nif:vote_verify_dirty(Key, Vote, Signature);
        Verified -> Verified
    end.

%% @private A decided quorum task's verified votes, `{AgentId, honest |
%% dishonest}', and the nodes of refused votes.
-spec record([{binary(), honest | dishonest}], [node()]) -> ok.
record(Votes, RefusedNodes) ->
    gen_server:cast(?MODULE, {record, Votes, RefusedNodes}).

%%====================================================================
%% gen_server callbacks
%%====================================================================

%% @private
-spec init([]) -> {ok, #state{}} | {stop, term()}.
init([]) ->
    process_flag(trap_exit, true),
    B = erlmcp_flow_config:get(byzantine),
    case load_key() of
        {ok, Key} ->
            Key =:= undefined orelse persistent_term:put(?KEY, Key),
            persistent_term:put(?GUARD, erlmcp_flow_nif:replay_guard(maps:get(replay_window_ms, B))),
            _ = ets:new(?TABLE, [named_table, protected, set, {read_concurrency, true}]),
            {ok, #state{threshold = float(maps:get(blacklist_threshold, B)),
                        min_votes = maps:get(min_votes, B),
                        ttl = maps:get(blacklist_ttl_ms, B)}};
        {error, Reason} ->
            {stop, Reason}
    end.

%% @private
-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call({unblacklist, Who}, _From, #state{agents = A, nodes = N} = State) ->
    ets:delete(?TABLE, Who),
    State1 = State#state{agents = maps:remove(Who, A), nodes = maps:remove(Who, N)},
    publish_excluded(),
    {reply, ok, State1};
handle_call({reputation, Id}, _From, #state{agents = A} = State) ->
    {reply, maps:get(Id, A, {0, 0}), State};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast({record, Votes, Refused}, State0) ->
    State1 = lists:foldl(fun agent_vote/2, State0, Votes),
    Voters = lists:usort([V || {Id, _} <- Votes, V <- [voter_node(Id)], V =/= undefined]),
    State2 = lists:foldl(fun(N, S) -> node_vote(N, accepted, S) end, State1, Voters),
    State = lists:foldl(fun(N, S) -> node_vote(N, refused, S) end, State2, Refused),
    publish_excluded(),
    {noreply, State};
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info({agents_mirrored, Node}, State) ->
    %% new agents of a blacklisted node: passed by from now on too (the
    %% cluster process sends this after each mirror)
    is_blacklisted(Node) andalso publish_excluded(),
    {noreply, State};
handle_info(expire, State) ->
    Now = now_ms(),
    ets:select_delete(?TABLE, [{{'_', '$1'}, [{is_integer, '$1'}, {'=<', '$1', Now}], [true]}]),
    publish_excluded(),
    {noreply, State};
handle_info(_Info, State) ->
    {noreply, State}.

%% @private
-spec terminate(term(), #state{}) -> ok.
terminate(_Reason, _State) ->
    _ = persistent_term:erase(?KEY),
    _ = persistent_term:erase(?GUARD),
    _ = persistent_term:erase(?EXCLUDED),
    ok.

%% @private The state holds no secret (the key is a resource); reports show
%% the counts only.
-spec format_status(#{state => _, message => _, reason => _, log => [_]}) ->
          #{state => _, message => _, reason => _, log => [_]}.
format_status(Status) ->
    maps:map(fun(state, #state{agents = A, nodes = N}) ->
                     #{agents_rated => map_size(A), nodes_rated => map_size(N)};
                (_, V) -> V
             end, Status).

%%====================================================================
%% Internal functions
%%====================================================================

call(Request) ->
    erlmcp_flow_call:call(?MODULE, Request, 5000).

%% The secret, from the environment (the published configuration has it
%% redacted), into a key resource.
load_key() ->
    Env = case application:get_env(erlmcp_flow, byzantine) of
              {ok, M} when is_map(M) -> M;
              _ -> #{}
          end,
    Secret = case Env of
                 #{hmac_secret := S} when is_binary(S) -> {ok, S};
                 #{hmac_secret_file := Path} when Path =/= undefined ->
                     case file:read_file(Path) of
                         {ok, Bin} -> {ok, string:trim(Bin, trailing, [[$\r, $\n], $\n])};
                         {error, Why} -> {error, {byzantine, {hmac_secret_file, Why}}}
                     end;
                 #{} -> none
             end,
    case Secret of
        none -> {ok, undefined};
        {error, _} = E -> E;
        {ok, Bin1} ->
            case erlmcp_flow_nif:vote_key(Bin1) of
                {ok, Key} -> {ok, Key};
                {error, weak_secret} -> {error, {byzantine, {hmac_secret, shorter_than_16_bytes}}}
            end
    end.

agent_vote({Id, Verdict}, #state{agents = A} = State) ->
    {H, D} = maps:get(Id, A, {0, 0}),
    HD = case Verdict of honest -> {H + 1, D}; dishonest -> {H, D + 1} end,
    State1 = State#state{agents = A#{Id => HD}},
    maybe_blacklist(Id, "agent", HD, State1),
    State1.

node_vote(Node, Verdict, #state{nodes = N} = State) ->
    {Ok, Bad} = maps:get(Node, N, {0, 0}),
    OB = case Verdict of accepted -> {Ok + 1, Bad}; refused -> {Ok, Bad + 1} end,
    State1 = State#state{nodes = N#{Node => OB}},
    maybe_blacklist(Node, "node", OB, State1),
    State1.

maybe_blacklist(Who, What, {Good, Bad}, #state{threshold = Th, min_votes = Min, ttl = Ttl}) ->
    Total = Good + Bad,
    case Total >= Min andalso Bad / Total > Th andalso not is_blacklisted(Who) of
        true ->
            logger:warning("erlmcp_flow: ~s ~ts blacklisted: ~b of its ~b quorum votes were "
                           "dishonest or refused", [What, to_text(Who), Bad, Total]),
            Ttl =:= infinity orelse erlang:send_after(Ttl, self(), expire),
            ets:insert(?TABLE, {Who, case Ttl of infinity -> infinity; _ -> now_ms() + Ttl end});
        false ->
            ok
    end.

to_text(A) when is_atom(A) -> atom_to_binary(A);
to_text(B) -> B.

voter_node(Id) ->
    case erlmcp_flow_registry:lookup_pid(Id) of
        Pid when is_pid(Pid) -> node(Pid);
        _ -> undefined
    end.

%% The ids decisions pass by, published for callers (it changes rarely).
publish_excluded() ->
    Black = blacklisted(),
    Nodes = [N || N <- Black, is_atom(N)],
    Ids = [Id || Id <- Black, is_binary(Id)] ++
          [Id || {Id, Pid, _, _} <- erlmcp_flow_registry:list_agents(), lists:member(node(Pid), Nodes)],
    New = lists:usort(Ids),
    case persistent_term:get(?EXCLUDED, []) of
        New -> ok;
        _ -> persistent_term:put(?EXCLUDED, New)
    end.

now_ms() ->
    erlang:monotonic_time(millisecond).
