-module(erlmcp_flow_config_tests).

-include_lib("eunit/include/eunit.hrl").

-define(SECTIONS, [byzantine, circuit_breaker, correlation, export, failure_detector,
                   load_balancer, metrics, q_learning, timeouts]).

defaults_have_every_section_test() ->
    D = erlmcp_flow_config:defaults(),
    ?assertEqual(lists:sort([clock | ?SECTIONS]), lists:sort(maps:keys(D))),
    ?assertEqual(system, maps:get(clock, D)),
    ?assertMatch(#{strategy := round_robin, consistent_hash_vnodes := 150},
                 maps:get(load_balancer, D)),
    ?assertMatch(#{alpha := 0.1, gamma := 0.9, epsilon := 0.1}, maps:get(q_learning, D)),
    ?assertMatch(#{routing := 5000, execution := 30000}, maps:get(timeouts, D)),
    ?assertMatch(#{ttl_ms := 3600000, max_entries := 100000}, maps:get(correlation, D)),
    ?assertMatch(#{http := false, ip := loopback, port := 9464}, maps:get(metrics, D)),
    ?assertMatch(#{file := undefined, url := undefined}, maps:get(export, D)).

telemetry_values_are_checked_test() ->
    Bad = [{correlation, max_entries, 0}, {correlation, ttl_ms, -1},
           {metrics, port, 70000}, {metrics, ip, "127.0.0.1"}, {metrics, http, yes},
           {export, url, "ftp://collector/v1/traces"}, {export, url, <<"https://c/v1">>},
           {export, url, "not a url"}, {export, file, ""}, {export, service_name, <<>>},
           {export, batch_size, 0}],
    [?assertEqual({error, {invalid_config, {S, K}, V}},
                  erlmcp_flow_config:validate(#{S => #{K => V}})) || {S, K, V} <- Bad],
    Good = [{metrics, ip, {127, 0, 0, 1}}, {metrics, ip, any}, {metrics, port, 0},
            {export, url, "http://127.0.0.1:4318/v1/traces"},
            {export, url, <<"HTTP://collector/v1/traces">>}, {export, file, "/tmp/spans.jsonl"}],
    [?assertMatch({ok, #{S := #{K := V}}}, erlmcp_flow_config:validate(#{S => #{K => V}}))
     || {S, K, V} <- Good].

empty_environment_gives_defaults_test() ->
    ?assertEqual({ok, erlmcp_flow_config:defaults()}, erlmcp_flow_config:validate(#{})).

partial_section_merges_over_defaults_test() ->
    {ok, C} = erlmcp_flow_config:validate(#{timeouts => #{execution => 1000},
                                            q_learning => #{alpha => 0.5}}),
    ?assertMatch(#{execution := 1000, routing := 5000}, maps:get(timeouts, C)),
    ?assertMatch(#{alpha := 0.5, gamma := 0.9}, maps:get(q_learning, C)).

unknown_section_is_named_test() ->
    ?assertEqual({error, {unknown_config_key, routing}},
                 erlmcp_flow_config:validate(#{routing => #{}})).

unknown_key_is_named_test() ->
    ?assertEqual({error, {unknown_config_key, {timeouts, exec}}},
                 erlmcp_flow_config:validate(#{timeouts => #{exec => 1}})).

bad_values_are_named_test_() ->
    Cases = [{q_learning, alpha, 0}, {q_learning, alpha, 1.5}, {q_learning, gamma, 1.0},
             {q_learning, epsilon_schedule, step}, {q_learning, model_path, 42},
             {load_balancer, strategy, fastest}, {load_balancer, consistent_hash_vnodes, 0},
             {load_balancer, hash_balance_factor, 0.9},
             {circuit_breaker, timeout, -1}, {circuit_breaker, window_type, sliding},
             {failure_detector, phi_threshold, 0}, {byzantine, enabled, yes},
             {byzantine, hmac_secret, <<"short">>}, {timeouts, execution, 0},
             {timeouts, routing, infinity}, {timeouts, max_retry_attempts, -1}],
    [?_assertEqual({error, {invalid_config, {S, K}, V}},
                   erlmcp_flow_config:validate(#{S => #{K => V}}))
     || {S, K, V} <- Cases].

clock_is_system_or_manual_test() ->
    ?assertMatch({ok, #{clock := manual}}, erlmcp_flow_config:validate(#{clock => manual})),
    ?assertEqual({error, {invalid_config, clock, sundial}},
                 erlmcp_flow_config:validate(#{clock => sundial})).

section_must_be_a_map_test() ->
    ?assertEqual({error, {invalid_config, timeouts, [{execution, 1}]}},
                 erlmcp_flow_config:validate(#{timeouts => [{execution, 1}]})).

keys_that_depend_on_each_other_are_checked_test() ->
    ?assertEqual({error, {invalid_config, {q_learning, slow_threshold_ms}, 50}},
                 erlmcp_flow_config:validate(#{q_learning => #{slow_threshold_ms => 50}})),
    ?assertEqual({error, {invalid_config, {q_learning, epsilon_min}, 0.5}},
                 erlmcp_flow_config:validate(#{q_learning => #{epsilon_min => 0.5}})),
    ?assertEqual({error, {invalid_config, {timeouts, max_retry_delay}, 50}},
                 erlmcp_flow_config:validate(#{timeouts => #{max_retry_delay => 50}})).

format_error_names_key_and_value_test() ->
    Msg = erlmcp_flow_config:format_error({invalid_config, {load_balancer, strategy}, fastest}),
    ?assertNotEqual(nomatch, string:find(Msg, "strategy")),
    ?assertNotEqual(nomatch, string:find(Msg, "fastest")),
    ?assertNotEqual(nomatch, string:find(erlmcp_flow_config:format_error(
                                           {unknown_config_key, {timeouts, exec}}), "exec")).

bad_environment_stops_the_start_test() ->
    _ = application:stop(erlmcp_flow),
    {ok, _} = application:ensure_all_started(inets),
    _ = application:load(erlmcp_flow),
    application:set_env(erlmcp_flow, load_balancer, #{strategy => fastest}),
    try
        {error, {Reason, _}} = application:start(erlmcp_flow),
        ?assertEqual({invalid_config, {load_balancer, strategy}, fastest}, Reason),
        ?assertEqual(undefined, whereis(erlmcp_flow_sup))
    after
        application:unset_env(erlmcp_flow, load_balancer)
    end,
    application:set_env(erlmcp_flow, timeouts, #{execution => 1234}),
    try
        ok = application:start(erlmcp_flow),
        ?assertEqual(1234, erlmcp_flow_config:get(timeouts, execution)),
        ?assertEqual(5000, erlmcp_flow_config:get(timeouts, routing))
    after
        application:unset_env(erlmcp_flow, timeouts),
        ok = application:stop(erlmcp_flow)
    end.
