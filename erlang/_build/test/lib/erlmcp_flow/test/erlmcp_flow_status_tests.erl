-module(erlmcp_flow_status_tests).

-include_lib("eunit/include/eunit.hrl").

-import(erlmcp_flow_test_util, [echo_agent/0]).

%% The status document without a browser: sorting by each column, filters,
%% explain for an unknown or bad capability set, and what a stopped node
%% answers. (erlmcp_flow_status_SUITE renders the page in Chromium.)
document_test_() ->
    {setup,
     fun() ->
             Apps = erlmcp_flow_test_util:start(),
             [ok = erlmcp_flow:register_agent(Id, echo_agent(), Caps)
              || {Id, Caps} <- [{<<"a">>, [<<"x">>]}, {<<"b">>, [<<"x">>, <<"y">>]}, {<<"c">>, [<<"y">>]}]],
             [{ok, _, _} = erlmcp_flow:execute(#{}, #{capabilities => [<<"x">>]}) || _ <- lists:seq(1, 10)],
             Apps
     end,
     fun(Apps) ->
             erlmcp_flow_test_util:unregister_all(),
             erlmcp_flow_test_util:stop(Apps)
     end,
     [{"every sort, both orders, a filter and a page", fun sorts/0},
      {"explain of capability sets, good and bad", fun explain/0},
      {"the handler's answers", fun handler/0}]}.

ids(Doc) ->
    [maps:get(id, I) || I <- maps:get(items, maps:get(agents, Doc))].

sorts() ->
    [begin
         Doc = erlmcp_flow_status:document(#{<<"sort">> => S, <<"order">> => O}),
         ?assertEqual(3, length(ids(Doc)))
     end || S <- [<<"id">>, <<"node">>, <<"in_flight">>, <<"p50_us">>, <<"p99_us">>,
                  <<"success_rate">>, <<"breaker">>, <<"bogus">>],
            O <- [<<"asc">>, <<"desc">>]],
    ?assertEqual([<<"c">>, <<"b">>, <<"a">>], ids(erlmcp_flow_status:document(#{<<"order">> => <<"desc">>}))),
    ?assertEqual([<<"b">>], ids(erlmcp_flow_status:document(#{<<"capability">> => <<"y">>, <<"limit">> => <<"1">>}))),
    ?assertEqual([<<"c">>], ids(erlmcp_flow_status:document(#{<<"capability">> => <<"y">>, <<"offset">> => <<"1">>}))),
    ?assertEqual(3, length(ids(erlmcp_flow_status:document(#{<<"limit">> => <<"-5">>, <<"traces">> => <<"x">>})))),
    ?assertEqual({error, {badarg, params}}, erlmcp_flow_status:document(nope)).

explain() ->
    #{candidates := [_, _]} = erlmcp_flow_status:explain(#{<<"capabilities">> => <<"x">>}),
    #{candidates := []} = erlmcp_flow_status:explain(#{<<"capabilities">> => <<"nobody">>}),
    #{candidates := [_]} = erlmcp_flow_status:explain(#{<<"capabilities">> => <<"x,y">>, <<"task_class">> => <<"c">>}),
    ?assertEqual({error, {badarg, params}}, erlmcp_flow_status:explain(42)).

handler() ->
    {200, "text/html" ++ _, Page} = erlmcp_flow_status:handle(<<"/status">>, <<>>),
    ?assertNotEqual(nomatch, binary:match(Page, <<"/status.json">>)),
    {200, "application/json", _} = erlmcp_flow_status:handle(<<"/status.json">>, <<"sort=p99_us&order=desc">>),
    {200, "application/json", _} = erlmcp_flow_status:handle(<<"/status/explain.json">>, <<"capabilities=x">>),
    {200, "application/json", _} = erlmcp_flow_status:handle(<<"/status.json">>, <<"%%%">>),
    {404, _, _} = erlmcp_flow_status:handle(<<"/status/other">>, <<>>),
    {400, _, _} = erlmcp_flow_status:handle(42, <<>>).

%% Sorted by breaker, open breakers last; a stopped node answers 503.
breaker_sort_and_stopped_test() ->
    erlmcp_flow_test_util:with_env(
      [{circuit_breaker, #{failure_threshold => 1, min_requests => 1}}, {clock, manual}],
      fun() ->
              [ok = erlmcp_flow:register_agent(Id, echo_agent(), [<<"x">>]) || Id <- [<<"a">>, <<"b">>, <<"c">>]],
              %% one failure opens a breaker (threshold 1); past the timeout
              %% it is half-open
              Open = fun(Id) ->
                             allow = erlmcp_flow_circuit_breaker:allow_request(Id),
                             ok = erlmcp_flow_circuit_breaker:record_result(Id, {error, boom})
                     end,
              Open(<<"b">>),
              {ok, _} = erlmcp_flow_registry:advance_clock(3600 * 1000000),
              ?assertEqual(half_open, erlmcp_flow_circuit_breaker:state(<<"b">>)),
              Open(<<"a">>),
              ?assertEqual(open, erlmcp_flow_circuit_breaker:state(<<"a">>)),
              Doc = erlmcp_flow_status:document(#{<<"sort">> => <<"breaker">>}),
              ?assertEqual([<<"c">>, <<"b">>, <<"a">>], ids(Doc)),
              ?assertMatch([#{breaker := closed}, #{breaker := half_open}, #{breaker := open}],
                           maps:get(items, maps:get(agents, Doc))),
              erlmcp_flow_test_util:unregister_all()
      end),
    ?assertMatch({503, "application/json", _}, erlmcp_flow_status:handle(<<"/status.json">>, <<>>)),
    ?assertMatch({503, "application/json", _},
                 erlmcp_flow_status:handle(<<"/status/explain.json">>, <<"capabilities=x">>)).
