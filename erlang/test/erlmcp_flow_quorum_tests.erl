-module(erlmcp_flow_quorum_tests).

%% PropEr first: eunit.hrl leaves out its own ?LET when one is defined.
-include_lib("proper/include/proper.hrl").
-include_lib("eunit/include/eunit.hrl").

-import(erlmcp_flow_test_util, [with_env/2, wait_until/1]).

-define(SECRET, <<"quorum-tests-secret-0123456789">>).

%% For any N >= 2F+1 voters of which at most F lie with any answers, in any
%% order, with any of them silent (late or dead): the decided value is the
%% honest one or nothing yet, never a lie.
%% 0.2 s here; a loaded machine (or PropEr's modules loaded cold) can take
%% longer than EUnit's default 5 s.
tally_never_decides_a_lie_test_() ->
    {timeout, 120, ?_assert(proper:quickcheck(prop_never_a_lie(), [{numtests, 2000}, quiet]))}.

prop_never_a_lie() ->
    ?FORALL({F, Extra, LiarAnswers, Order, Silent},
            {range(0, 5), range(0, 4), list(oneof([integer(), atom(), binary()])),
             list(integer()), list(boolean())},
            begin
                N = 2 * F + 1 + Extra,
                Liars = min(F, length(LiarAnswers)),
                Votes0 = [{id(I), {ok, honest}} || I <- lists:seq(1, N - Liars)] ++
                         [{id(N - Liars + I), {ok, {lie, lists:nth(I, LiarAnswers)}}}
                          || I <- lists:seq(1, Liars)],
                Votes = [V || {V, Quiet} <- lists:zip(shuffle(Votes0, Order),
                                                      pad(Silent, length(Votes0))),
                              not Quiet],
                %% each prefix is what the collector has seen at some moment
                lists:all(fun(K) ->
                                  case erlmcp_flow_quorum:tally(lists:reverse(lists:sublist(Votes, K)), F) of
                                      pending -> true;
                                      {accepted, {ok, honest}, Ids} -> length(Ids) >= F + 1;
                                      {accepted, _Lie, _} -> false
                                  end
                          end, lists:seq(0, length(Votes)))
            end).

id(I) -> integer_to_binary(I).

shuffle(L, Keys) ->
    [X || {_, X} <- lists:sort(lists:zip(pad(Keys, length(L)), L))].

pad(L, N) when length(L) >= N -> lists:sublist(L, N);
pad(L, N) -> L ++ lists:duplicate(N - length(L), hd(L ++ [false])).

plurality_test() ->
    ?assertEqual(none, erlmcp_flow_quorum:plurality([])),
    ?assertEqual({a, [<<"1">>, <<"3">>]},
                 erlmcp_flow_quorum:plurality([{<<"3">>, a}, {<<"2">>, b}, {<<"1">>, a}])),
    %% a tie: the answer voted for first
    ?assertEqual({b, [<<"1">>]}, erlmcp_flow_quorum:plurality([{<<"2">>, a}, {<<"1">>, b}])).

%% One agent counts once, whatever it voted after its first vote: in
%% summary mode a node asked for any of its agents may pick one the caller
%% asked already (a named agent it mirrors).
one_vote_per_agent_test() ->
    ?assertEqual(pending, erlmcp_flow_quorum:tally([{<<"a">>, x}, {<<"a">>, x}], 1)),
    ?assertEqual({accepted, x, [<<"a">>, <<"b">>]},
                 erlmcp_flow_quorum:tally([{<<"b">>, x}, {<<"a">>, y}, {<<"a">>, x}], 1)),
    ?assertEqual({x, [<<"a">>]},
                 erlmcp_flow_quorum:plurality([{<<"a">>, y}, {<<"a">>, y}, {<<"a">>, x}])).

%% With `byzantine.enabled' every execute/2 is a quorum task by default;
%% route_task/2 stays one attempt on one agent.
route_task_with_quorum_default_test_() ->
    {timeout, 60, fun route_task_with_quorum_default/0}.

route_task_with_quorum_default() ->
    with_env([{byzantine, #{enabled => true, hmac_secret => ?SECRET}}],
             fun() ->
                     [ok = erlmcp_flow:register_agent(Id, agent(42), [<<"q">>])
                      || Id <- [<<"h1">>, <<"h2">>, <<"h3">>]],
                     Self = self(),
                     {ok, Id, _Ctx} = erlmcp_flow:route_task(#{n => 1}, #{capabilities => [<<"q">>],
                                                                          reply_to => Self}),
                     ?assert(lists:member(Id, [<<"h1">>, <<"h2">>, <<"h3">>])),
                     receive
                         {erlmcp_flow_result, _, Answer} ->
                             ?assertMatch({ok, 42, #{agent_id := Id}}, Answer)
                     after 5000 ->
                         error(no_answer)
                     end,
                     ?assertMatch({ok, 42, #{quorum := _}},
                                  erlmcp_flow:execute(#{n => 2}, #{capabilities => [<<"q">>]}))
             end).

%% One node: honest agents outvote a liar; the liar is blacklisted after
%% min_votes; without a secret, quorum tasks are refused.
single_node_test_() ->
    {timeout, 60, fun single_node/0}.

single_node() ->
    with_env([{byzantine, #{hmac_secret => ?SECRET, min_votes => 4, vote_timeout => 2000}}],
             fun() ->
                     [ok = erlmcp_flow:register_agent(Id, agent(Answer), [<<"q">>])
                      || {Id, Answer} <- [{<<"h1">>, 42}, {<<"h2">>, 42}, {<<"h3">>, 42},
                                          {<<"liar">>, 666}]],
                     Results = [erlmcp_flow:execute(#{n => I}, #{capabilities => [<<"q">>],
                                                                 quorum => 1})
                                || I <- lists:seq(1, 30)],
                     ?assertEqual([42], lists:usort([R || {ok, R, _} <- Results])),
                     ?assertEqual(30, length(Results)),
                     {ok, 42, #{quorum := #{f := 1, agreeing := Agreeing, votes := Votes}}} = hd(Results),
                     ?assert(Agreeing >= 2 andalso Votes >= 2),
                     wait_until(fun() -> lists:member(<<"liar">>, erlmcp_flow_byzantine_detector:excluded()) end),
                     #{dishonest := D, blacklisted := true} =
                         erlmcp_flow_byzantine_detector:reputation(<<"liar">>),
                     ?assert(D >= 4),
                     ?assertEqual(false, erlmcp_flow_byzantine_detector:is_blacklisted(<<"h1">>)),
                     %% blacklisted: no strategy picks it any more
                     Plain = [erlmcp_flow:execute(#{}, #{capabilities => [<<"q">>], strategy => S})
                              || S <- erlmcp_flow_requirements:strategies(), _ <- lists:seq(1, 10)],
                     ?assertEqual([42], lists:usort([R || {ok, R, _} <- Plain])),
                     %% not enough agents: best effort by default, an error when asked
                     ?assertMatch({ok, 42, _}, erlmcp_flow:execute(#{}, #{capabilities => [<<"q">>],
                                                                          quorum => 3})),
                     ?assertEqual({error, {insufficient_agents, 3, 7}},
                                  erlmcp_flow:execute(#{}, #{capabilities => [<<"q">>], quorum => 3,
                                                             on_no_quorum => error})),
                     ok = erlmcp_flow_byzantine_detector:unblacklist(<<"liar">>),
                     ?assertEqual(false, erlmcp_flow_byzantine_detector:is_blacklisted(<<"liar">>)),
                     ?assertEqual({error, {badarg, {quorum, -1}}},
                                  erlmcp_flow:execute(#{}, #{capabilities => [<<"q">>], quorum => -1}))
             end).

%% A blacklisting lasts blacklist_ttl_ms: then the agent is a candidate again.
blacklist_ttl_test() ->
    with_env([{byzantine, #{hmac_secret => ?SECRET, min_votes => 3, blacklist_ttl_ms => 2000}}],
             fun() ->
                     [ok = erlmcp_flow:register_agent(Id, agent(Answer), [<<"t">>])
                      || {Id, Answer} <- [{<<"t1">>, 1}, {<<"t2">>, 1}, {<<"t3">>, 1},
                                          {<<"bad">>, 2}]],
                     [{ok, 1, _} = erlmcp_flow:execute(#{}, #{capabilities => [<<"t">>], quorum => 1})
                      || _ <- lists:seq(1, 20)],
                     %% blacklisted, then published to the routing path
                     wait_until(fun() -> erlmcp_flow_byzantine_detector:excluded() =:= [<<"bad">>] end),
                     ?assert(erlmcp_flow_byzantine_detector:is_blacklisted(<<"bad">>)),
                     ?assertEqual([<<"bad">>], erlmcp_flow_byzantine_detector:blacklisted()),
                     erlmcp_flow_test_util:wait_until(fun() -> erlmcp_flow_byzantine_detector:excluded() =:= [] end, 10000),
                     ?assertNot(erlmcp_flow_byzantine_detector:is_blacklisted(<<"bad">>)),
                     ?assertEqual([], erlmcp_flow_byzantine_detector:blacklisted())
             end).

%% Two liars agreeing and one honest agent at F = 1: the liars' answer has
%% F+1 votes (more than F lie: outside the promise), which is why F must
%% bound the liars. With every vote split, best effort returns the
%% plurality as degraded and `error' refuses.
split_votes_test() ->
    with_env([{byzantine, #{hmac_secret => ?SECRET, vote_timeout => 2000}}],
             fun() ->
                     [ok = erlmcp_flow:register_agent(Id, agent(Answer), [<<"s">>])
                      || {Id, Answer} <- [{<<"a">>, 1}, {<<"b">>, 2}, {<<"c">>, 3}]],
                     {ok, _, #{quorum := degraded}} =
                         erlmcp_flow:execute(#{}, #{capabilities => [<<"s">>], quorum => 1}),
                     ?assertMatch({error, {no_quorum, #{votes := 3}}},
                                  erlmcp_flow:execute(#{}, #{capabilities => [<<"s">>], quorum => 1,
                                                             on_no_quorum => error}))
             end).

%% The secret from a file (a trailing newline dropped) signs as the same
%% secret given inline; a short one stops the start naming the key only.
secret_file_test() ->
    Path = filename:join("/tmp", "erlmcp_flow_secret_" ++ integer_to_list(erlang:unique_integer([positive]))),
    ok = file:write_file(Path, <<?SECRET/binary, "\n">>),
    with_env([{byzantine, #{hmac_secret_file => Path}}],
             fun() ->
                     ok = erlmcp_flow:register_agent(<<"f">>, agent(7), [<<"f">>]),
                     ?assertMatch({ok, 7, #{quorum := #{agreeing := 1}}},
                                  erlmcp_flow:execute(#{}, #{capabilities => [<<"f">>], quorum => 0}))
             end),
    ok = file:write_file(Path, <<"short\n">>),
    _ = application:load(erlmcp_flow),
    ok = application:set_env(erlmcp_flow, byzantine, #{hmac_secret_file => Path}),
    try
        {error, Reason} = application:ensure_all_started(erlmcp_flow),
        Text = lists:flatten(io_lib:format("~p", [Reason])),
        ?assertNotEqual(nomatch, string:find(Text, "shorter_than_16_bytes")),
        ?assertEqual(nomatch, string:find(Text, "short\\n"))
    after
        application:unset_env(erlmcp_flow, byzantine),
        file:delete(Path)
    end.

%% No candidate at all; an agent that fails its vote (no vote counts for
%% it); node => local.
edges_test() ->
    with_env([{byzantine, #{hmac_secret => ?SECRET, vote_timeout => 2000}}],
             fun() ->
                     ?assertEqual({error, no_agents_available},
                                  erlmcp_flow:execute(#{}, #{capabilities => [<<"nobody">>], quorum => 1})),
                     Failing = spawn(fun F() -> receive {execute_task, _, _, From, Ref} ->
                                                            From ! {task_result, Ref, {error, no}}, F()
                                                end end),
                     ok = erlmcp_flow:register_agent(<<"f1">>, Failing, [<<"e">>]),
                     [ok = erlmcp_flow:register_agent(Id, agent(5), [<<"e">>]) || Id <- [<<"e1">>, <<"e2">>]],
                     %% two honest votes are F+1 at F = 1, whatever the failing one does
                     {ok, 5, #{quorum := #{agreeing := 2}}} =
                         erlmcp_flow:execute(#{}, #{capabilities => [<<"e">>], quorum => 1, node => local}),
                     %% only the failing one: no vote at all
                     ok = erlmcp_flow:register_agent(<<"f2">>, Failing, [<<"only-failing">>]),
                     ?assertMatch({error, {no_quorum, #{votes := 0}}},
                                  erlmcp_flow:execute(#{}, #{capabilities => [<<"only-failing">>], quorum => 0}))
             end).

no_secret_test() ->
    with_env([],
             fun() ->
                     ok = erlmcp_flow:register_agent(<<"x">>, agent(1), [<<"x">>]),
                     ?assertEqual({error, {byzantine, no_secret}},
                                  erlmcp_flow:execute(#{}, #{capabilities => [<<"x">>], quorum => true})),
                     ?assertMatch({ok, 1, _}, erlmcp_flow:execute(#{}, #{capabilities => [<<"x">>]}))
             end).

%% The secret never shows in a crash report of the process that loaded it.
secret_not_in_crash_report_test() ->
    with_env([{byzantine, #{hmac_secret => ?SECRET}}],
             fun() ->
                     Pid = whereis(erlmcp_flow_byzantine_detector),
                     Log = erlmcp_flow_test_util:capture_log(
                             fun() ->
                                     logger:set_primary_config(level, info),
                                     ok = sys:terminate(Pid, crash_for_the_test),
                                     wait_until(fun() -> is_pid(whereis(erlmcp_flow_byzantine_detector)) end),
                                     timer:sleep(100)
                             end),
                     logger:set_primary_config(level, critical),
                     Text = iolist_to_binary([T || {_, T} <- Log]),
                     ?assertNotEqual(nomatch, binary:match(Text, <<"crash_for_the_test">>)),
                     ?assertEqual(nomatch, binary:match(Text, ?SECRET)),
                     %% nor in the published configuration
                     ?assertEqual(redacted, erlmcp_flow_config:get(byzantine, hmac_secret))
             end).

agent(Answer) ->
    spawn(fun() -> agent_loop(Answer) end).

agent_loop(Answer) ->
    receive
        {execute_task, _Task, _Ctx, From, Ref} ->
            From ! {task_result, Ref, {ok, Answer}},
            agent_loop(Answer);
        _ ->
            agent_loop(Answer)
    end.

%% The detector's answers on a stopped node, a secret file that is not
%% there, votes of agents that are gone.
detector_edges_test() ->
    _ = application:stop(erlmcp_flow),
    ?assertNot(erlmcp_flow_byzantine_detector:is_blacklisted(<<"x">>)),
    ?assertEqual([], erlmcp_flow_byzantine_detector:blacklisted()),
    ?assertEqual(#{honest => 0, dishonest => 0, blacklisted => false},
                 erlmcp_flow_byzantine_detector:reputation(<<"x">>)),
    _ = application:load(erlmcp_flow),
    ok = application:set_env(erlmcp_flow, byzantine, #{hmac_secret_file => "/nonexistent/erlmcp_flow/secret"}),
    try
        {error, Reason} = application:ensure_all_started(erlmcp_flow),
        ?assertNotEqual(nomatch, string:find(lists:flatten(io_lib:format("~p", [Reason])),
                                             "{hmac_secret_file,enoent}"))
    after
        application:unset_env(erlmcp_flow, byzantine)
    end,
    with_env([{byzantine, #{hmac_secret => ?SECRET, min_votes => 1}}],
             fun() ->
                     %% an agent unregistered before its vote was recorded: its
                     %% record counts, no node is charged for it
                     ok = erlmcp_flow_byzantine_detector:record([{<<"ghost">>, dishonest}], []),
                     D = whereis(erlmcp_flow_byzantine_detector),
                     %% the cluster's word that a node's agents were mirrored
                     D ! {agents_mirrored, node()},
                     ?assertEqual({error, unknown_call}, gen_server:call(D, nonsense)),
                     gen_server:cast(D, nonsense),
                     D ! nonsense,
                     ?assertMatch(#{dishonest := 1, blacklisted := true},
                                  erlmcp_flow_byzantine_detector:reputation(<<"ghost">>)),
                     ?assertEqual([<<"ghost">>], erlmcp_flow_byzantine_detector:blacklisted())
             end).

%% The collector against a hostile vote service that holds the key: a vote
%% naming another node, one whose answer is not a term, one signed an hour
%% ago, a vote under a reference it never gave, a malformed one and a
%% failure: each refused, the honest answer still decided by F+1.
hostile_votes_test() ->
    with_env([{byzantine, #{hmac_secret => ?SECRET, vote_timeout => 3000}}],
             fun() ->
                     Key = erlmcp_flow_byzantine_detector:key(),
                     true = erlang:unregister(erlmcp_flow_vote_service),
                     Evil = spawn_link(fun() -> evil_vote_service(Key) end),
                     true = erlang:register(erlmcp_flow_vote_service, Evil),
                     Ids = [<<"good-1">>, <<"good-2">>, <<"good-3">>, <<"good-4">>,
                            <<"wrong-node">>, <<"not-a-term">>, <<"stale">>],
                     [ok = erlmcp_flow:register_agent(Id, agent(0), [<<"h">>]) || Id <- Ids],
                     ?assertMatch({ok, 42, #{quorum := #{f := 3, agreeing := 4}}},
                                  erlmcp_flow:execute(#{}, #{capabilities => [<<"h">>], quorum => 3})),
                     %% once every vote is in, the honest ones are on record
                     wait_until(fun() ->
                                        lists:all(fun(G) -> maps:get(honest, erlmcp_flow_byzantine_detector:reputation(G)) =:= 1 end,
                                                  [<<"good-1">>, <<"good-2">>, <<"good-3">>, <<"good-4">>])
                                end),
                     [?assertMatch(#{honest := 0, dishonest := 0}, erlmcp_flow_byzantine_detector:reputation(Id))
                      || Id <- [<<"wrong-node">>, <<"not-a-term">>, <<"stale">>]],
                     unlink(Evil),
                     exit(Evil, kill)
             end).

evil_vote_service(Key) ->
    receive
        {flow_vote_request, Collector, VoteRef, _Task, #{trace_id := T, span_id := S}, Id, _Pid, _Timeout} ->
            Node = atom_to_binary(node()),
            Good = term_to_binary({ok, 42}, [deterministic]),
            Now = os:system_time(millisecond),
            Vote = fun(V) -> Collector ! {flow_vote, VoteRef, V, erlmcp_flow_nif:vote_sign(Key, V)} end,
            Nonce = rand:uniform(1 bsl 62),
            case Id of
                <<"good-", _/binary>> -> Vote({T, S, Id, Node, Good, Now, Nonce});
                <<"wrong-node">> -> Vote({T, S, Id, <<"elsewhere@nowhere">>, Good, Now, Nonce});
                <<"not-a-term">> -> Vote({T, S, Id, Node, <<"not a term">>, Now, Nonce});
                <<"stale">> ->
                    Unasked = {T, S, Id, Node, Good, Now, Nonce + 1},
                    Collector ! {flow_vote, make_ref(), Unasked, erlmcp_flow_nif:vote_sign(Key, Unasked)},
                    Collector ! {flow_vote, make_ref(), {junk}, <<>>},
                    Collector ! {flow_vote_failed, make_ref(), nothing},
                    Vote({T, S, Id, Node, Good, Now - 3600000, Nonce})
            end,
            evil_vote_service(Key)
    end.

%% The vote service's own failures: an agent that dies voting, one slower
%% than the vote timeout (told to stop), a node without the secret.
vote_failures_test() ->
    with_env([{byzantine, #{hmac_secret => ?SECRET, vote_timeout => 300}}],
             fun() ->
                     Dies = spawn(fun() -> receive {execute_task, _, _, _, _} -> exit(voting_is_hard) end end),
                     Self = self(),
                     Slow = spawn(fun() -> receive {execute_task, _, _, _, _} ->
                                                       receive {cancel_task, _} = C -> Self ! C end
                                           end end),
                     [ok = erlmcp_flow:register_agent(Id, agent(5), [<<"v">>]) || Id <- [<<"v1">>, <<"v2">>]],
                     ok = erlmcp_flow:register_agent(<<"dies">>, Dies, [<<"v">>, <<"d">>]),
                     ok = erlmcp_flow:register_agent(<<"slow">>, Slow, [<<"s">>]),
                     ok = erlmcp_flow:register_agent(<<"v3">>, agent(5), [<<"s">>]),
                     ok = erlmcp_flow:register_agent(<<"v4">>, agent(5), [<<"s">>]),
                     ?assertMatch({ok, 5, #{quorum := #{agreeing := 2}}},
                                  erlmcp_flow:execute(#{}, #{capabilities => [<<"v">>], quorum => 1})),
                     ?assertMatch({ok, 5, #{quorum := #{agreeing := 2}}},
                                  erlmcp_flow:execute(#{}, #{capabilities => [<<"s">>], quorum => 1})),
                     receive {cancel_task, _} -> ok after 5000 -> error(slow_voter_not_cancelled) end
             end),
    with_env([],
             fun() ->
                     Ref = make_ref(),
                     ok = erlmcp_flow_vote_service:vote({flow_vote_request, self(), Ref, #{},
                                                         #{trace_id => <<0:128>>, span_id => <<0:64>>},
                                                         <<"x">>, self(), 100}),
                     receive {flow_vote_failed, Ref, R} -> ?assertEqual(no_secret, R)
                     after 1000 -> error(no_answer)
                     end
             end).

%% A vote over a large answer is signed and verified on a dirty scheduler,
%% with the same signature as on a normal one.
large_vote_test() ->
    {ok, Key} = erlmcp_flow_nif:vote_key(?SECRET),
    Answer = term_to_binary({ok, lists:seq(1, 100000)}),
    ?assert(byte_size(Answer) > 65536),
    Vote = {<<"0af7651916cd43dd8448eb211c80319c">>, <<"b7ad6b7169203331">>, <<"agent">>,
            <<"node@host">>, Answer, 1700000000000, 42},
    Sig = erlmcp_flow_byzantine_detector:sign(Key, Vote),
    %% past 64 KiB of answer the normal-scheduler calls refuse, by name
    ?assertEqual({error, {dirty_only, 65536}}, erlmcp_flow_nif:vote_sign(Key, Vote)),
    ?assertEqual({error, {dirty_only, 65536}}, erlmcp_flow_nif:vote_verify(Key, Vote, Sig)),
    ?assertEqual(Sig, erlmcp_flow_nif:vote_sign_dirty(Key, Vote)),
    ?assertEqual(ok, erlmcp_flow_byzantine_detector:verify(Key, Vote, Sig)),
    %% the largest answer they take, and ids past 1 KiB (which only a
    %% direct caller could send) go to the dirty ones through the wrappers
    AtBound = setelement(5, Vote, binary:copy(<<1>>, 65536)),
    AtSig = erlmcp_flow_nif:vote_sign(Key, AtBound),
    ?assertEqual(AtSig, erlmcp_flow_nif:vote_sign_dirty(Key, AtBound)),
    ?assertEqual(ok, erlmcp_flow_nif:vote_verify(Key, AtBound, AtSig)),
    LongIds = setelement(3, setelement(5, Vote, <<"small">>), binary:copy(<<"a">>, 2000)),
    ?assertEqual({error, {dirty_only, 65536}}, erlmcp_flow_nif:vote_sign(Key, LongIds)),
    LongSig = erlmcp_flow_byzantine_detector:sign(Key, LongIds),
    ?assertEqual(LongSig, erlmcp_flow_nif:vote_sign_dirty(Key, LongIds)),
    ?assertEqual(ok, erlmcp_flow_byzantine_detector:verify(Key, LongIds, LongSig)),
    Tampered = setelement(5, Vote, <<Answer/binary, 0>>),
    ?assertEqual({error, bad_signature}, erlmcp_flow_byzantine_detector:verify(Key, Tampered, Sig)),
    Small = setelement(5, Vote, term_to_binary({ok, 1})),
    ?assertEqual(ok, erlmcp_flow_byzantine_detector:verify(
                       Key, Small, erlmcp_flow_byzantine_detector:sign(Key, Small))).
