-module(erlmcp_flow_grafana_tests).

-include_lib("eunit/include/eunit.hrl").

-import(erlmcp_flow_test_util, [echo_agent/0]).

%% Every query of the Grafana dashboard (docs/grafana/erlmcp_flow.json)
%% names metric families the node's Prometheus exposition emits.
dashboard_queries_name_emitted_families_test() ->
    Path = filename:join(erlmcp_flow_test_util:repo_root("docs/grafana/erlmcp_flow.json"),
                         "docs/grafana/erlmcp_flow.json"),
    {ok, Bin} = file:read_file(Path),
    Dash = erlmcp_flow_test_json:decode(Bin),
    Exprs = [E || #{<<"targets">> := Ts} <- maps:get(<<"panels">>, Dash),
                  #{<<"expr">> := E} <- Ts] ++
            [Q || #{<<"query">> := #{<<"query">> := Q}} <- maps:get(<<"list">>, maps:get(<<"templating">>, Dash))],
    ?assert(length(Exprs) >= 20),
    Used = lists:usort([family(N) || E <- Exprs,
                                    {match, Ms} <- [re:run(E, "erlmcp_flow_[a-z0-9_]+", [global, {capture, all, binary}])],
                                    [N] <- Ms]),
    Apps = erlmcp_flow_test_util:start(),
    try
        ok = erlmcp_flow:register_agent(<<"g">>, echo_agent(), [<<"g">>]),
        {ok, _, _} = erlmcp_flow:execute(#{}, #{capabilities => [<<"g">>]}),
        Text = iolist_to_binary(erlmcp_flow_prometheus:render()),
        {match, Ts} = re:run(Text, "^# TYPE (erlmcp_flow_[a-z0-9_]+) ", [global, multiline, {capture, all_but_first, binary}]),
        Emitted = lists:usort([T || [T] <- Ts]),
        ?assertEqual([], Used -- Emitted),
        %% and the dashboard shows most of what is emitted
        ?assert(length(Used) >= length(Emitted) - 2)
    after
        erlmcp_flow_test_util:unregister_all(),
        erlmcp_flow_test_util:stop(Apps)
    end.

%% A summary's _sum and _count samples belong to its family.
family(Name) ->
    case re:run(Name, "^(.*)_(sum|count)$", [{capture, [1], binary}]) of
        {match, [F]} when F =:= <<"erlmcp_flow_decision_latency_seconds">> -> F;
        _ -> Name
    end.
