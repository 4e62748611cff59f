%% Q-learning from Erlang: the shared vectors, the TD property (PropEr), the
%% saved model (kept across restarts, bad files moved aside), the table and
%% the explanation, and learning on a stationary two-agent problem.
-module(erlmcp_flow_q_learning_tests).

%% PropEr first: eunit.hrl leaves out its own ?LET when one is defined.
-include_lib("proper/include/proper.hrl").
-include_lib("eunit/include/eunit.hrl").

-import(erlmcp_flow_test_util, [raw_agent/1, sync_registry/0]).

close(A, B) -> abs(A - B) =< 1.0e-6 * max(1.0, abs(B)).

%%--------------------------------------------------------------------
%% The pure functions against the vectors cargo checks too

td_update_vectors_test() ->
    Cases = erlmcp_flow_test_json:vectors("td_update.json"),
    ?assert(length(Cases) > 100),
    [?assert(close(erlmcp_flow_nif:td_update(Q, R, M, A, G), E))
     || #{<<"q">> := Q, <<"reward">> := R, <<"max_next">> := M, <<"alpha">> := A,
          <<"gamma">> := G, <<"expected">> := E} <- Cases].

reward_vectors_test() ->
    Cases = erlmcp_flow_test_json:vectors("reward.json"),
    [?assert(close(erlmcp_flow_nif:reward(L, Ok, F, S), E))
     || #{<<"latency_us">> := L, <<"ok">> := Ok, <<"fast_us">> := F, <<"slow_us">> := S,
          <<"expected">> := E} <- Cases].

prop_td_update_is_the_formula() ->
    ?FORALL({Q, R, M, A, G},
            {proper_types:float(-1.0e6, 1.0e6), proper_types:float(-11.0, 2.0),
             proper_types:float(-1.0e6, 1.0e6), proper_types:float(0.001, 1.0),
             proper_types:float(0.0, 0.999)},
            close(erlmcp_flow_nif:td_update(Q, R, M, A, G), Q + A * (R + G * M - Q))).

%% Property runs get a timeout of their own: a loaded machine can take
%% longer than EUnit's default 5 s.
td_update_property_test_() ->
    {timeout, 120, ?_assert(proper:quickcheck(prop_td_update_is_the_formula(),
                                              [{numtests, 2000}, {to_file, user}, quiet]))}.

%% A completed task through the real router moves its cell by the formula,
%% with max Q(s', .) the best value the (greedy) decision saw.
prop_completion_applies_the_formula() ->
    ?FORALL({Latency, Ok}, {proper_types:integer(0, 2000000), proper_types:boolean()},
            begin
                {ok, R} = erlmcp_flow_nif:router_new(#{clock => manual, epsilon => 0.0,
                                                       epsilon_min => 0.0}),
                ok = erlmcp_flow_nif:agent_insert(R, <<"a">>, self(), [<<"x">>], agent, 1),
                [#{q_value := Q, state := {0, high, fast, 0}}] =
                    erlmcp_flow_nif:explain(R, [], undefined),
                {ok, _, _, L, _, none} = erlmcp_flow_nif:decide(R, [], q_learning, undefined, undefined, [], any, undefined),
                {ok, _} = erlmcp_flow_nif:clock_advance(R, Latency),
                {ok, Latency} = erlmcp_flow_nif:complete(L, case Ok of true -> ok; false -> error end),
                #{<<"a">> := #{{0, high, fast, 0} := {After, 1}}} = erlmcp_flow_nif:q_table(R),
                Reward = erlmcp_flow_nif:reward(Latency, Ok, 50000, 200000),
                close(After, Q + 0.1 * (Reward + 0.9 * Q - Q))
            end).

completion_property_test_() ->
    {timeout, 120, ?_assert(proper:quickcheck(prop_completion_applies_the_formula(),
                                              [{numtests, 300}, {to_file, user}, quiet]))}.

%% Two agents, 10 ms and 100 ms, epsilon fixed at 0.1: after 1000 episodes
%% the better one is chosen at least 90% of the time.
two_agents_test() ->
    {ok, R} = erlmcp_flow_nif:router_new(#{clock => manual, epsilon => 0.1,
                                           epsilon_decay => 1.0}),
    ok = erlmcp_flow_nif:agent_insert(R, <<"fast">>, self(), [<<"x">>], agent, 1),
    ok = erlmcp_flow_nif:agent_insert(R, <<"slow">>, self(), [<<"x">>], agent, 1),
    Picks = [begin
                 {ok, Id, _, L, _, none} = erlmcp_flow_nif:decide(R, [], q_learning, undefined, undefined, [], any, undefined),
                 {ok, _} = erlmcp_flow_nif:clock_advance(R, case Id of <<"fast">> -> 10000;
                                                                       <<"slow">> -> 100000 end),
                 {ok, _} = erlmcp_flow_nif:complete(L, ok),
                 Id
             end || _ <- lists:seq(1, 2000)],
    Fast = length([P || P <- lists:nthtail(1000, Picks), P =:= <<"fast">>]),
    ?assert(Fast >= 900).

%%--------------------------------------------------------------------
%% The model file, through the application

model_test_() ->
    {foreach,
     fun() ->
             Dir = filename:join(["/tmp", "erlmcp_flow_q_" ++ integer_to_list(erlang:unique_integer([positive]))]),
             ok = filelib:ensure_dir(filename:join(Dir, "x")),
             Path = filename:join(Dir, "q.model"),
             start_with(Path),
             {Dir, Path}
     end,
     fun({Dir, _}) ->
             _ = application:stop(erlmcp_flow),
             application:unset_env(erlmcp_flow, q_learning),
             [file:delete(F) || F <- filelib:wildcard(filename:join(Dir, "*"))],
             file:del_dir(Dir)
     end,
     [fun(S) -> {"learned values survive a restart", fun() -> survives_restart(S) end} end,
      fun(S) -> {"a corrupt file is moved aside, never overwritten", fun() -> corrupt(S) end} end,
      fun(S) -> {"a truncated file is moved aside", fun() -> truncated(S) end} end,
      fun(S) -> {"an incompatible file is moved aside", fun() -> incompatible(S) end} end,
      fun(S) -> {"a file with a non-finite value is moved aside", fun() -> non_finite(S) end} end,
      fun(S) -> {"devices, FIFOs and oversized files are refused unread", fun() -> not_models(S) end} end,
      fun(S) -> {"save, load, table, reset and explain", fun() -> api(S) end} end]}.

start_with(Path) ->
    _ = application:stop(erlmcp_flow),
    logger:set_primary_config(level, critical),
    _ = application:load(erlmcp_flow),
    ok = application:set_env(erlmcp_flow, q_learning, #{model_path => Path, save_interval => 10}),
    {ok, _} = application:ensure_all_started(erlmcp_flow).

learn(Id, N) ->
    Agent = raw_agent(fun(_) -> {ok, done} end),
    ok = erlmcp_flow:register_agent(Id, Agent, [<<"x">>]),
    [{ok, done, _} = erlmcp_flow:execute(#{}, #{strategy => q_learning}) || _ <- lists:seq(1, N)],
    Agent.

survives_restart({_Dir, Path}) ->
    learn(<<"a">>, 25),
    Table = erlmcp_flow_q_learning:get_q_table(),
    #{<<"a">> := Cells} = Table,
    ?assert(map_size(Cells) > 0),
    ok = application:stop(erlmcp_flow),           %% saves on the way out
    ?assert(filelib:is_regular(Path)),
    start_with(Path),
    %% the agent is gone but its values wait for it
    ?assertEqual(Table, erlmcp_flow_q_learning:get_q_table()),
    ?assertMatch(#{episodes := 25}, erlmcp_flow:stats()),
    learn(<<"a">>, 1),
    #{<<"a">> := Cells2} = erlmcp_flow_q_learning:get_q_table(),
    ?assert(lists:sum([V || {_, V} <- maps:values(Cells2)]) =:=
                lists:sum([V || {_, V} <- maps:values(Cells)]) + 1).

moved_aside(Path) ->
    [Aside] = filelib:wildcard(Path ++ ".bad-*"),
    Aside.

corrupt({_Dir, Path}) ->
    learn(<<"a">>, 5),
    {ok, _} = erlmcp_flow_q_learning:save(),
    ok = application:stop(erlmcp_flow),
    {ok, Bin} = file:read_file(Path),
    Half = byte_size(Bin) div 2,
    <<Head:Half/binary, B, Tail/binary>> = Bin,
    Bad = <<Head/binary, (B bxor 16#5a), Tail/binary>>,
    ok = file:write_file(Path, Bad),
    start_with(Path),
    ?assertEqual(#{}, erlmcp_flow_q_learning:get_q_table()),
    ?assertEqual({ok, Bad}, file:read_file(moved_aside(Path))),
    %% saving again writes a new file; the bad one is untouched
    learn(<<"b">>, 3),
    {ok, _} = erlmcp_flow_q_learning:save(),
    ?assertEqual({ok, Bad}, file:read_file(moved_aside(Path))),
    ?assertMatch({ok, {loaded, 1, 3}}, erlmcp_flow_q_learning:load(Path)).

truncated({_Dir, Path}) ->
    learn(<<"a">>, 5),
    ok = application:stop(erlmcp_flow),
    {ok, Bin} = file:read_file(Path),
    ok = file:write_file(Path, binary:part(Bin, 0, byte_size(Bin) - 10)),
    start_with(Path),
    ?assertEqual(#{}, erlmcp_flow_q_learning:get_q_table()),
    ?assert(filelib:is_regular(moved_aside(Path))).

incompatible({_Dir, Path}) ->
    learn(<<"a">>, 5),
    ok = application:stop(erlmcp_flow),
    _ = application:load(erlmcp_flow),
    ok = application:set_env(erlmcp_flow, q_learning, #{model_path => Path, task_classes => 4}),
    {ok, _} = application:ensure_all_started(erlmcp_flow),
    ?assertEqual(#{}, erlmcp_flow_q_learning:get_q_table()),
    ?assert(filelib:is_regular(moved_aside(Path))).

%% A model whose CRC is right but one value is NaN (or infinite): corrupt.
non_finite({_Dir, Path}) ->
    learn(<<"a">>, 5),
    ok = application:stop(erlmcp_flow),
    {ok, Bin} = file:read_file(Path),
    %% the header (28 bytes), the id's length and the id "a", then the first value
    Body = binary:part(Bin, 0, byte_size(Bin) - 4),
    <<Head:31/binary, _Value:8/binary, Rest/binary>> = Body,
    [begin
         Bad0 = <<Head/binary, Nan/binary, Rest/binary>>,
         Bad = <<Bad0/binary, (erlang:crc32(Bad0)):32/little>>,
         ok = file:write_file(Path, Bad),
         start_with(Path),
         ?assertEqual(#{}, erlmcp_flow_q_learning:get_q_table()),
         ?assertEqual({ok, Bad}, file:read_file(moved_aside(Path))),
         ?assertMatch({ok, #{candidates := []}}, erlmcp_flow:explain(#{capabilities => [<<"x">>]})),
         ok = application:stop(erlmcp_flow),
         ok = file:delete(moved_aside(Path)),
         ok = file:write_file(Path, Bad),
         ?assertMatch({error, {non_finite, _}}, load_stopped(Path))
     end || Nan <- [<<0:48, 16#f8, 16#7f>>, <<0:48, 16#f0, 16#7f>>, <<0:48, 16#f0, 16#ff>>]],
    start_with(Path).

%% load/1 with the application running on another model path.
load_stopped(Path) ->
    start_with(Path ++ ".other"),
    try erlmcp_flow_q_learning:load(Path)
    after application:stop(erlmcp_flow)
    end.

not_models({Dir, _Path}) ->
    %% /dev/zero would read until memory ran out; a FIFO would block the server
    ?assertMatch({error, {not_regular, _}}, erlmcp_flow_q_learning:load(<<"/dev/zero">>)),
    ?assertMatch({error, {not_regular, _}}, erlmcp_flow_q_learning:load(Dir)),
    Fifo = filename:join(Dir, "fifo"),
    case os:find_executable("mkfifo") of
        false -> error({missing_test_dependency, mkfifo, "coreutils' mkfifo is not installed"});
        Mk ->
            _ = os:cmd(Mk ++ " " ++ Fifo),
            ?assertMatch({error, {not_regular, _}}, erlmcp_flow_q_learning:load(Fifo)),
            file:delete(Fifo)
    end,
    %% a header claiming one agent, and a megabyte more than one agent can be
    Big = filename:join(Dir, "big.model"),
    Header = <<"EMFQ", 1:16/little, 0:16, 99:32/little, 1:32/little, 0:64, 1:32/little>>,
    ok = file:write_file(Big, [Header, binary:copy(<<0>>, 1 bsl 20)]),
    ?assertMatch({error, {too_large, _}}, erlmcp_flow_q_learning:load(Big)),
    %% the server still answers
    ?assertMatch({ok, _}, erlmcp_flow_q_learning:save()).

api({Dir, _Path}) ->
    ?assertMatch({ok, #{candidates := [], top := []}}, erlmcp_flow:explain(#{capabilities => [<<"x">>]})),
    A = learn(<<"a">>, 12),
    ok = erlmcp_flow:register_agent(<<"b">>, raw_agent(fun(_) -> {error, no} end), [<<"x">>]),
    [_ = erlmcp_flow:execute(#{}, #{strategy => round_robin}) || _ <- lists:seq(1, 6)],
    {ok, #{candidates := Cands, top := Top}} = erlmcp_flow:explain(#{capabilities => [<<"x">>]}),
    ?assertEqual(2, length(Cands)),
    %% each candidate's age of information, and the value decisions see
    [begin
         ?assert(is_integer(Age) andalso Age >= 0),
         ?assert(Aged >= Q)
     end || #{age_ms := Age, q_value := Q, aged_q_value := Aged} <- Cands],
    ?assertMatch([{<<"a">>, P1}, {<<"b">>, P2}] when P1 > P2, Top),
    ?assertMatch({error, {badarg, {capabilities, nope}}}, erlmcp_flow:explain(#{capabilities => nope})),
    ?assertMatch({error, {badarg, requirements}}, erlmcp_flow:explain(nope)),
    {ok, Bytes} = erlmcp_flow_q_learning:save(),
    ?assert(Bytes > 0),
    Other = filename:join(Dir, "other.model"),
    ?assertEqual({ok, none}, erlmcp_flow_q_learning:load(Other)),
    ?assertEqual({error, {badarg, path}}, erlmcp_flow_q_learning:load(42)),
    ok = file:write_file(Other, <<"garbage">>),
    ?assertMatch({error, {bad_magic, _}}, erlmcp_flow_q_learning:load(Other)),
    ?assertEqual({ok, <<"garbage">>}, file:read_file(Other)),
    ok = erlmcp_flow_q_learning:reset(),
    ?assertEqual(#{<<"a">> => #{}, <<"b">> => #{}}, erlmcp_flow_q_learning:get_q_table()),
    ?assertMatch(#{episodes := 0}, erlmcp_flow:stats()),
    exit(A, kill),
    sync_registry().

no_model_path_test() ->
    erlmcp_flow_test_util:start(),
    try
        ?assertEqual({error, no_model_path}, erlmcp_flow_q_learning:save())
    after
        application:stop(erlmcp_flow)
    end.
