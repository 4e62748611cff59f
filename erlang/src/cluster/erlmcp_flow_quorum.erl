%% @doc Byzantine quorum tasks: one task answered by 2F+1 agents, on
%% distinct nodes when there are enough, each answer a vote signed by its
%% node; an answer is accepted once F+1 verified votes agree (at most F can
%% lie, so F+1 alike include an honest one).
%%
%% `execute/2' with `Requirements#{quorum => F}' (or `quorum => true', F
%% from `byzantine.byzantine_tolerance' and the agents asked
%% `byzantine.quorum_size', at least 2F+1; `byzantine.enabled => true' makes
%% `true' the default) comes here from the router. The candidates are the
%% agents holding the capabilities (with `node => local', this node's),
%% minus blacklisted agents and nodes. Fewer than 2F+1: under
%% `on_no_quorum => best_effort' (the default, from `byzantine.on_no_quorum'
%% or the requirement) the task goes to those there are and the same rule
%% applies; under `error' it is `{error, {insufficient_agents, Have, Need}}'.
%%
%% Each chosen agent's node runs the task on it (erlmcp_flow_vote_service)
%% and sends back the signed vote. A collector process checks each vote:
%% that it is for this task's trace, for the attempt (span id) this agent
%% was given, from the node the agent lives on; its signature, in constant
%% time; its timestamp within `byzantine.replay_window_ms' and its nonce
%% unseen (the node's replay guard). When no answer has F+1 verified votes
%% after `byzantine.vote_timeout' ms (or once every vote is in), under
%% `best_effort' the plurality answer is returned with `Meta#{quorum =>
%% degraded}', under `error' it is `{error, {no_quorum, Votes}}'. The
%% collector keeps counting votes that come after the decision, until every
%% chosen agent voted or the vote timeout passed, and then tells the
%% byzantine detector who agreed, who did not and which nodes sent refused
%% votes (the reputation that blacklists liars).
-module(erlmcp_flow_quorum).

-export([execute/3]).
-export([tally/2]).
-export([plurality/1]).
-export([collect/6]).

-type vote() :: {binary(), term()}.

%% @doc Runs a planned quorum task whose span is open (`Trace').
-spec execute(erlmcp_flow:task(), map(), erlmcp_flow_router:trace()) ->
          erlmcp_flow_router:answer().
execute(Task, Plan, Trace) ->
    B = erlmcp_flow_config:get(byzantine),
    %% quorum => true: F and the agents asked (at least 2F+1) from config
    {F, Need} = case maps:get(quorum, Plan) of
                    true ->
                        F0 = maps:get(byzantine_tolerance, B),
                        {F0, max(2 * F0 + 1, maps:get(quorum_size, B))};
                    N when is_integer(N) ->
                        {N, 2 * N + 1}
                end,
    Mode = maps:get(on_no_quorum, Plan, maps:get(on_no_quorum, B)),
    case erlmcp_flow_byzantine_detector:key() of
        undefined ->
            {error, {byzantine, no_secret}};
        _Key ->
            Chosen = choose(candidates(Plan), Need),
            case length(Chosen) of
                0 -> {error, no_agents_available};
                Have when Have < Need, Mode =:= error -> {error, {insufficient_agents, Have, Need}};
                _ -> run(Task, Trace, F, Chosen, Mode, maps:get(vote_timeout, B))
            end
    end.

%% @doc The answer F+1 votes agree on, with those voters, or `pending'.
%% Votes are `{AgentId, Answer}'; an agent counts once, by its first vote.
-spec tally([vote()], non_neg_integer()) ->
          {accepted, term(), [binary()]} | pending | {error, {badarg, votes | f}}.
tally(_Votes, F) when not is_integer(F); F < 0 ->
    {error, {badarg, f}};
tally(Votes, F) ->
    case is_votes(Votes) of
        false ->
            {error, {badarg, votes}};
        true ->
            case [{A, Ids} || {A, Ids} <- group(Votes), length(Ids) >= F + 1] of
                [{Answer, Ids} | _] -> {accepted, Answer, Ids};
                [] -> pending
            end
    end.

%% @doc The answer most votes agree on (ties: the one first voted for), with
%% its voters; `none' without votes.
-spec plurality([vote()]) -> {term(), [binary()]} | none | {error, {badarg, votes}}.
plurality([]) ->
    none;
plurality(Votes) ->
    case is_votes(Votes) of
        true -> most(Votes);
        false -> {error, {badarg, votes}}
    end.

most(Votes) ->
    [First | Rest] = group(Votes),
    lists:foldl(fun({_, Ids} = G, {_, Best} = Acc) ->
                        case length(Ids) > length(Best) of
                            true -> G;
                            false -> Acc
                        end
                end, First, Rest).

%%====================================================================
%% Internal functions
%%====================================================================

is_votes(L) when is_list(L) ->
    try lists:all(fun({Id, _}) -> is_binary(Id); (_) -> false end, L)
    catch error:_ -> false  % an improper list
    end;
is_votes(_) ->
    false.

%% Answers with their voters, in the order each answer was first voted for
%% (votes are kept newest first). An agent counts once, by its first vote
%% (in summary mode a node asked for any of its agents may pick one asked
%% already).
group(Votes) ->
    {Groups, _} =
        lists:foldl(fun({Id, _}, {Acc, Seen}) when is_map_key(Id, Seen) ->
                            {Acc, Seen};
                       ({Id, Answer}, {Acc, Seen}) ->
                            Acc1 = case lists:keyfind(Answer, 1, Acc) of
                                       {Answer, Ids} -> lists:keyreplace(Answer, 1, Acc, {Answer, Ids ++ [Id]});
                                       false -> Acc ++ [{Answer, [Id]}]
                                   end,
                            {Acc1, Seen#{Id => true}}
                    end, {[], #{}}, lists:reverse(Votes)),
    Groups.

candidates(#{capabilities := Caps} = Plan) ->
    Excluded = erlmcp_flow_byzantine_detector:excluded(),
    All = [{Id, Pid} || Id <- erlmcp_flow_registry:query_agents(Caps),
                        not lists:member(Id, Excluded),
                        Pid <- [erlmcp_flow_registry:lookup_pid(Id)], is_pid(Pid),
                        not erlmcp_flow_byzantine_detector:is_blacklisted(node(Pid))],
    case Plan of
        #{node := local} -> [C || {_, P} = C <- All, node(P) =:= node()];
        #{} -> All ++ node_ballots(Caps)
    end.

%% In summary mode another node's agents are not known here: each node
%% whose summary holds the capabilities is asked for one vote, by an agent
%% it picks among its agents holding them (`{any, {node, Node, Caps}}').
node_ballots(Caps) ->
    [{any, {node, Node, Caps}} || {Node, _} <- erlmcp_flow_cluster_summary:nodes_for(lists:usort(Caps), [node()]),
                            not erlmcp_flow_byzantine_detector:is_blacklisted(Node)].

%% `Need' agents, as many nodes as there are first: one agent of each node
%% in turn, in random order.
choose(Candidates, Need) ->
    ByNode = maps:groups_from_list(fun({_, Where}) -> node_of(Where) end, shuffle(Candidates)),
    take_round(shuffle(maps:values(ByNode)), Need, [], []).

take_round(_Lists, 0, _Next, Acc) ->
    lists:reverse(Acc);
take_round([], _Need, [], Acc) ->
    lists:reverse(Acc);
take_round([], Need, Next, Acc) ->
    take_round(lists:reverse(Next), Need, [], Acc);
take_round([[C | Rest] | Lists], Need, Next, Acc) ->
    take_round(Lists, Need - 1, case Rest of [] -> Next; _ -> [Rest | Next] end, [C | Acc]).

node_of({node, Node, _Caps}) -> Node;
node_of(Pid) -> node(Pid).

shuffle(L) ->
    [X || {_, X} <- lists:sort([{rand:uniform(), X} || X <- L])].

%% Sends the votes' requests from a collector and waits for its decision.
run(Task, #{trace_id := TraceId, span_id := TaskSpan, trace_flags := Flags} = Trace, F, Chosen,
    Mode, Timeout) ->
    T0 = erlang:monotonic_time(microsecond),
    Caller = self(),
    Ref = make_ref(),
    Ballots = [{Id, Pid, erlmcp_flow_nif:generate_span_id()} || {Id, Pid} <- Chosen],
    Ctx0 = #{trace_id => TraceId, parent_span_id => TaskSpan, trace_flags => Flags},
    Ctx = case Trace of
              #{tracestate := TS} -> Ctx0#{tracestate => TS};
              #{} -> Ctx0
          end,
    {Collector, MRef} = proc_lib:spawn_opt(?MODULE, collect,
                                           [Caller, Ref, Task, Ctx, Ballots, {F, Timeout}],
                                           [monitor]),
    receive
        {quorum_decided, Ref, Decision} ->
            erlang:demonitor(MRef, [flush]),
            answer(Decision, F, Mode, Trace, length(Chosen), T0);
        {'DOWN', MRef, process, Collector, Reason} ->
            {error, {internal_error, {quorum_collector, Reason}}}
    end.

answer({accepted, {ok, Result}, [First | _] = Agreeing, Votes, Refused}, F, _Mode,
       #{trace_id := T, span_id := S}, Sent, T0) ->
    {ok, Result, #{agent_id => First, trace_id => T, span_id => S,
                   latency_us => erlang:monotonic_time(microsecond) - T0, attempts => Sent,
                   tried => [],
                   quorum => #{f => F, votes => Votes, agreeing => length(Agreeing),
                               rejected => Refused}}};
answer({undecided, Verified, Refused}, F, best_effort, #{trace_id := T, span_id := S}, Sent, T0) ->
    case plurality(Verified) of
        {{ok, Result}, [First | _]} ->
            {ok, Result, #{agent_id => First, trace_id => T, span_id => S,
                           latency_us => erlang:monotonic_time(microsecond) - T0,
                           attempts => Sent, tried => [], quorum => degraded}};
        none ->
            {error, {no_quorum, #{f => F, votes => 0, rejected => Refused}}}
    end;
answer({undecided, Verified, Refused}, F, error, _Trace, _Sent, _T0) ->
    {error, {no_quorum, #{f => F, votes => length(Verified), rejected => Refused,
                          answers => [{A, length(Ids)} || {A, Ids} <- group(Verified)]}}}.

%% @private The collector: asks every chosen agent's node for its vote,
%% checks each vote, tells the caller as soon as F+1 agree (or at the vote
%% timeout, or once every vote is in), and records the reputation once
%% every vote is in or the timeout passed.
-spec collect(pid(), reference(), erlmcp_flow:task(), map(), [{binary(), pid(), binary()}],
              {non_neg_integer(), pos_integer()}) -> ok.
collect(Caller, Ref, Task, Ctx, Ballots, {F, Timeout}) ->
    Deadline = erlang:monotonic_time(millisecond) + Timeout,
    Pending = maps:from_list(
                [begin
                     VoteRef = make_ref(),
                     Request = {flow_vote_request, self(), VoteRef, Task, Ctx#{span_id => Span},
                                Id, Pid, Timeout},
                     erlang:send({erlmcp_flow_vote_service, node_of(Pid)}, Request, [noconnect]),
                     {VoteRef, {Id, node_of(Pid), Span}}
                 end || {Id, Pid, Span} <- Ballots]),
    #{trace_id := TraceId} = Ctx,
    loop(#{caller => Caller, ref => Ref, f => F, trace_id => TraceId, deadline => Deadline,
           pending => Pending, verified => [], refused => [], decided => false}).

loop(#{pending := P, decided := true} = S) when map_size(P) =:= 0 ->
    settle(S);
loop(#{pending := P} = S) when map_size(P) =:= 0 ->
    settle(decide(S));
loop(#{deadline := Deadline} = S) ->
    Left = max(0, Deadline - erlang:monotonic_time(millisecond)),
    receive
        {flow_vote, VoteRef, Vote, Sig} ->
            loop(check(VoteRef, Vote, Sig, S));
        {flow_vote_failed, VoteRef, _Reason} ->
            loop(S#{pending := maps:remove(VoteRef, maps:get(pending, S))})
    after Left ->
            settle(decide(S))
    end.

%% A vote verified or refused; then perhaps the decision.
check(VoteRef, Vote, Sig, #{pending := P, trace_id := TraceId} = S) ->
    case maps:take(VoteRef, P) of
        {{Id, Node, Span}, P1} ->
            S1 = S#{pending := P1},
            case verify(Vote, Sig, TraceId, Span, Id, Node) of
                {ok, Answer} ->
                    %% the agent that voted (a node asked for any names its
                    %% own): counted and rated once
                    Voter = element(3, Vote),
                    Verified = maps:get(verified, S1),
                    case lists:keymember(Voter, 1, Verified) of
                        true -> S1;
                        false -> maybe_accept(S1#{verified := [{Voter, Answer} | Verified]})
                    end;
                {error, _Why} ->
                    S1#{refused := [Node | maps:get(refused, S1)]}
            end;
        error ->
            %% not a vote this task asked for (a replay of another task's)
            case Vote of
                {_, _, _, NodeBin, _, _, _} when is_binary(NodeBin) ->
                    case known_node(NodeBin) of
                        {ok, Node} -> S#{refused := [Node | maps:get(refused, S)]};
                        error -> S
                    end;
                _ ->
                    S
            end
    end.

verify({TraceId, Span, Id, NodeBin, Bytes, _Ts, _Nonce} = Vote, Sig, TraceId, Span, Asked, Node)
  when is_binary(Bytes), is_binary(Sig), is_binary(Id), Asked =:= Id orelse Asked =:= any ->
    case NodeBin =:= atom_to_binary(Node) of
        false ->
            {error, wrong_node};
        true ->
            case erlmcp_flow_byzantine_detector:verify(erlmcp_flow_byzantine_detector:key(), Vote, Sig) of
                ok ->
                    case erlmcp_flow_nif:replay_check(erlmcp_flow_byzantine_detector:replay_guard(),
                                                      Vote, os:system_time(millisecond)) of
                        ok ->
                            try {ok, binary_to_term(Bytes, [safe])}
                            catch error:badarg -> {error, bad_answer}
                            end;
                        {error, _} = E -> E
                    end;
                {error, _} = E ->
                    E
            end
    end;
verify(_Vote, _Sig, _TraceId, _Span, _Id, _Node) ->
    {error, mismatch}.

known_node(Bin) ->
    try {ok, binary_to_existing_atom(Bin)}
    catch error:badarg -> error
    end.

maybe_accept(#{decided := true} = S) ->
    S;
maybe_accept(#{verified := V, f := F} = S) ->
    case tally(V, F) of
        {accepted, Answer, Ids} -> tell(S#{decided := true, accepted => {Answer, Ids}});
        pending -> S
    end.

%% At the deadline or with every vote in and nothing accepted.
decide(#{decided := true} = S) ->
    S;
decide(#{verified := V, refused := R} = S) ->
    #{caller := C, ref := Ref} = S,
    C ! {quorum_decided, Ref, {undecided, V, length(R)}},
    S#{decided := true}.

tell(#{caller := C, ref := Ref, accepted := {Answer, Ids}, verified := V, refused := R} = S) ->
    C ! {quorum_decided, Ref, {accepted, Answer, Ids, length(V), length(R)}},
    S.

%% Reputation: only a decided (accepted) answer tells honest from not.
settle(#{verified := V, refused := R} = S) ->
    Votes = case S of
                #{accepted := {Answer, _}} ->
                    [{Id, case A of Answer -> honest; _ -> dishonest end} || {Id, A} <- V];
                #{} ->
                    []
            end,
    erlmcp_flow_byzantine_detector:record(Votes, R),
    ok.
