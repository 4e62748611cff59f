%% @private
%% @doc A node's side of quorum voting: it runs a quorum task on one of its
%% own agents and sends the answer back as a vote signed by this node.
%%
%% A request `{flow_vote_request, ReplyTo, Ref, Task, Ctx, AgentId, Pid,
%% TimeoutMs}' (from any node's caller; in summary mode `AgentId' may be
%% `any' and `Pid' `{node, node(), Capabilities}': this node picks one of
%% its agents holding them) starts a process of its own: it sends
%% the agent the task as any attempt is sent, waits at most `TimeoutMs', and
%% answers `ReplyTo' with `{flow_vote, Ref, Vote, Signature}': `Vote' is
%% `{TraceId, SpanId, AgentId, Node, Answer, TimestampMs, Nonce}' (`Answer'
%% the agent's `{ok, Result}' in Erlang's deterministic external format,
%% the timestamp the system time, the nonce random) and the signature its
%% HMAC-SHA256 under the cluster's secret. An agent that fails, dies or is
%% late gives `{flow_vote_failed, Ref, Reason}'; a node without a secret
%% `{flow_vote_failed, Ref, no_secret}'.
-module(erlmcp_flow_vote_service).
-behaviour(gen_server).

-export([start_link/0]).
-export([vote/1]).
-export([in_flight/0]).

-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc The votes this node is running for any node's callers.
-spec in_flight() -> non_neg_integer().
in_flight() ->
    case erlmcp_flow_call:call(?MODULE, in_flight, 5000) of
        N when is_integer(N) -> N;
        {error, _} -> 0
    end.

%% @private
-spec init([]) -> {ok, #{voters := #{pid() => true}}}.
init([]) ->
    %% the votes' processes are linked to this server: they go with it, and
    %% their exits are messages here
    process_flag(trap_exit, true),
    {ok, #{voters => #{}}}.

%% @private
-spec handle_call(term(), gen_server:from(), map()) -> {reply, term(), map()}.
handle_call(in_flight, _From, #{voters := V} = State) ->
    {reply, map_size(V), State};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), map()) -> {noreply, map()}.
handle_info({flow_vote_request, ReplyTo, Ref, _Task, _Ctx, _AgentId, Pid, _Timeout} = Req, State)
  when is_pid(ReplyTo), is_reference(Ref), is_pid(Pid), node(Pid) =:= node();
       is_pid(ReplyTo), is_reference(Ref), element(1, Pid) =:= node, element(2, Pid) =:= node() ->
    Voter = proc_lib:spawn_link(?MODULE, vote, [Req]),
    {noreply, State#{voters := (maps:get(voters, State))#{Voter => true}}};
handle_info({'EXIT', Voter, _Why}, #{voters := V} = State) ->
    %% a vote's process ended (a crash is reported by proc_lib); its caller
    %% times out on the vote it never got
    {noreply, State#{voters := maps:remove(Voter, V)}};
handle_info(_Info, State) ->
    {noreply, State}.

%% @private One vote: the task on the agent, the answer signed.
-spec vote(tuple()) -> ok.
vote({flow_vote_request, ReplyTo, Ref, Task, Ctx, AgentId, Pid, Timeout}) ->
    Reply = case {erlmcp_flow_byzantine_detector:key(), agent(AgentId, Pid)} of
                {undefined, _} -> {flow_vote_failed, Ref, no_secret};
                {_, none} -> {flow_vote_failed, Ref, no_agents_available};
                {Key, {Id, Agent}} -> run(Key, Ref, Task, Ctx, Id, Agent, Timeout)
            end,
    _ = erlang:send(ReplyTo, Reply, [noconnect]),
    ok.

%% The agent asked for, or (a node asked in summary mode) one of this
%% node's agents holding the capabilities, not passed by, at random.
agent(AgentId, Pid) when is_pid(Pid) ->
    {AgentId, Pid};
agent(any, {node, _Node, Caps}) ->
    Excluded = erlmcp_flow_byzantine_detector:excluded(),
    case [{Id, P} || Id <- erlmcp_flow_registry:query_agents(Caps), not lists:member(Id, Excluded),
                     P <- [erlmcp_flow_registry:lookup_pid(Id)], is_pid(P), node(P) =:= node()] of
        [] -> none;
        Agents -> lists:nth(rand:uniform(length(Agents)), Agents)
    end;
agent(_AgentId, _Where) ->
    none.

run(Key, Ref, Task, #{trace_id := TraceId, span_id := SpanId} = Ctx, AgentId, Pid, Timeout) ->
    MRef = erlang:monitor(process, Pid),
    TaskRef = make_ref(),
    Pid ! {execute_task, Task, Ctx#{agent_id => AgentId}, self(), TaskRef},
    receive
        {task_result, TaskRef, {ok, Result}} ->
            erlang:demonitor(MRef, [flush]),
            Vote = {TraceId, SpanId, AgentId, atom_to_binary(node()),
                    term_to_binary({ok, Result}, [deterministic]),
                    os:system_time(millisecond), rand:uniform(1 bsl 62)},
            {flow_vote, Ref, Vote, erlmcp_flow_byzantine_detector:sign(Key, Vote)};
        {task_result, TaskRef, Other} ->
            erlang:demonitor(MRef, [flush]),
            {flow_vote_failed, Ref, {agent_error, Other}};
        {'DOWN', MRef, process, _, Reason} ->
            {flow_vote_failed, Ref, {agent_down, Reason}}
    after Timeout ->
            erlang:demonitor(MRef, [flush]),
            Pid ! {cancel_task, TaskRef},
            {flow_vote_failed, Ref, execution_timeout}
    end.
