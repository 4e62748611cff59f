-module(erlmcp_flow_config_tests).

-include_lib("eunit/include/eunit.hrl").

-define(SECTIONS, [byzantine, circuit_breaker, cluster, correlation, export, failure_detector,
                   load_balancer, mcp, metrics, q_learning, registry, timeouts, transports]).

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
             {byzantine, signature_algorithm, md5},
             {byzantine, on_no_quorum, maybe_later}, {cluster, scope, "flow"},
             {metrics, max_connections, 0}, {timeouts, execution, 0},
             {timeouts, routing, infinity}, {timeouts, max_retry_attempts, -1},
             {load_balancer, sample_above, 0}, {load_balancer, sample_above, many},
             {transports, tcp, #{nagle => true}}, {transports, tcp, 42},
             {mcp, servers, [#{id => <<"s">>, command => []}]}],
    [?_assertEqual({error, {invalid_config, {S, K}, V}},
                   erlmcp_flow_config:validate(#{S => #{K => V}}))
     || {S, K, V} <- Cases].

%% A secret is named, never shown: a short one (or a transport's token)
%% is refused as `redacted'; quorum by default needs a secret; the published
%% configuration does not hold it.
secrets_are_never_shown_test() ->
    ?assertEqual({error, {invalid_config, {byzantine, hmac_secret}, redacted}},
                 erlmcp_flow_config:validate(#{byzantine => #{hmac_secret => <<"short">>}})),
    {error, {invalid_config, {transports, http}, Shown}} =
        erlmcp_flow_config:validate(#{transports => #{http => #{token => <<"0123456789abcdef-tok">>,
                                                                 port => -1}}}),
    ?assertEqual(redacted, maps:get(token, Shown)),
    ?assertEqual({error, {invalid_config, {byzantine, enabled}, true}},
                 erlmcp_flow_config:validate(#{byzantine => #{enabled => true}})),
    Secret = <<"a-secret-of-the-cluster-1234">>,
    {ok, C} = erlmcp_flow_config:validate(#{byzantine => #{hmac_secret => Secret}}),
    ok = erlmcp_flow_config:publish(C),
    try
        ?assertEqual(redacted, erlmcp_flow_config:get(byzantine, hmac_secret)),
        ?assertEqual(nomatch, binary:match(term_to_binary(persistent_term:get()), Secret))
    after
        erlmcp_flow_config:unpublish()
    end.

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

%% Values the checks accept at their edges; of several bad sections, the
%% first in sorted order is named.
edge_values_are_accepted_test() ->
    [?assertMatch({ok, _}, erlmcp_flow_config:validate(#{S => #{K => V}}))
     || {S, K, V} <- [{load_balancer, sample_above, infinity}, {load_balancer, sample_above, 1},
                      {mcp, servers, [#{id => <<"s">>, command => ["srv", "--stdio"]},
                                      #{id => <<"h">>, url => "http://127.0.0.1:1/mcp"}]}]],
    ?assertEqual({error, {invalid_config, {circuit_breaker, timeout}, -1}},
                 erlmcp_flow_config:validate(#{timeouts => #{routing => 0},
                                               circuit_breaker => #{timeout => -1}})).

%% export.url: an https URL is told apart from one that is no URL.
export_url_errors_test() ->
    Https = erlmcp_flow_config:format_error({invalid_config, {export, url}, <<"https://c:4318/v1/traces">>}),
    ?assertNotEqual(nomatch, string:find(Https, "only http://")),
    [?assertNotEqual(nomatch, string:find(erlmcp_flow_config:format_error({invalid_config, {export, url}, V}),
                                          "an http:// URL with a host"))
     || V <- [42, "http://[::1", <<"ftp://h/x">>]].

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

%% Every size key has a maximum: past it the start stops with a reason that
%% names the key, before anything is allocated.
sizes_are_bounded_test_() ->
    Cases = [{load_balancer, consistent_hash_vnodes, 4000000000},
             {load_balancer, consistent_hash_vnodes, 1001},
             {circuit_breaker, window_size, 4000000000},
             {circuit_breaker, half_open_max_requests, 10001},
             {circuit_breaker, max_concurrent, 1 bsl 32},
             {circuit_breaker, max_waiting, 1000001},
             {q_learning, task_classes, 4000000000},
             {q_learning, task_classes, 257},
             {correlation, max_entries, 10000001},
             {export, queue_size, 1 bsl 40},
             {export, batch_size, 10001},
             {export, max_files, 101},
             {metrics, max_connections, 65537},
             {timeouts, max_retry_attempts, 101}],
    [?_assertEqual({error, {invalid_config, {S, K}, V}},
                   erlmcp_flow_config:validate(#{S => #{K => V}}))
     || {S, K, V} <- Cases] ++
    %% a count window of more than 10 000 calls; a time window may be 600 000 ms
    [?_assertEqual({error, {invalid_config, {circuit_breaker, window_size}, 10001}},
                   erlmcp_flow_config:validate(#{circuit_breaker => #{window_size => 10001}})),
     ?_assertMatch({ok, _}, erlmcp_flow_config:validate(
                              #{circuit_breaker => #{window_type => time, window_size => 600000}})),
     ?_assertMatch({error, {invalid_config, {circuit_breaker, window_size}, 600001}},
                   erlmcp_flow_config:validate(
                     #{circuit_breaker => #{window_type => time, window_size => 600001}}))].

%% Every time is at most 2^32 - 1 ms, the longest wait the VM allows.
times_are_bounded_test_() ->
    Max = erlmcp_flow_config:max_ms(),
    ?assertEqual(4294967295, Max),
    Keys = [{timeouts, routing}, {timeouts, execution}, {timeouts, heartbeat},
            {timeouts, base_retry_delay}, {timeouts, max_retry_delay},
            {circuit_breaker, timeout}, {circuit_breaker, slow_call_threshold},
            {correlation, ttl_ms}, {metrics, interval_ms}, {metrics, request_timeout_ms},
            {metrics, idle_timeout_ms}, {export, interval_ms}, {export, http_timeout_ms},
            {load_balancer, ewma_decay_ms}, {failure_detector, heartbeat_interval},
            {byzantine, vote_timeout}, {byzantine, replay_window_ms},
            {q_learning, slow_threshold_ms}],
    [?_assertEqual({error, {invalid_config, {S, K}, Max + 1}},
                   erlmcp_flow_config:validate(#{S => #{K => Max + 1}}))
     || {S, K} <- Keys] ++
    [?_assertMatch({ok, _}, erlmcp_flow_config:validate(#{timeouts => #{execution => Max,
                                                                         routing => Max}}))].

%% The block of the design's executive summary, exactly.
design_block() ->
    [{q_learning, #{epsilon => 0.1, alpha => 0.1, gamma => 0.9,
                    model_path => "data/q_table.bin"}},
     {load_balancer, #{strategy => round_robin, consistent_hash_vnodes => 150}},
     {circuit_breaker, #{failure_threshold => 5, min_requests => 10, timeout => 30000}},
     {failure_detector, #{max_retry_attempts => 3, base_retry_delay => 100,
                          max_retry_delay => 5000}},
     {byzantine, #{byzantine_tolerance => 1, quorum_size => 3,
                   signature_algorithm => hmac_sha256}},
     {timeouts, #{routing => 5000, execution => 30000, heartbeat => 5000}}].

the_design_block_validates_test() ->
    {ok, C} = erlmcp_flow_config:validate(maps:from_list(design_block())),
    ?assertMatch(#{heartbeat_interval := 5000, max_retry_attempts := 3},
                 maps:get(failure_detector, C)),
    ?assertMatch(#{heartbeat := 5000, max_retry_attempts := 3, base_retry_delay := 100,
                   max_retry_delay := 5000}, maps:get(timeouts, C)),
    ?assertMatch(#{byzantine_tolerance := 1, quorum_size := 3,
                   signature_algorithm := hmac_sha256}, maps:get(byzantine, C)).

the_design_block_starts_the_node_test() ->
    Dir = filename:join(["/tmp", "erlmcp_flow_design_" ++ integer_to_list(erlang:unique_integer([positive]))]),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    {ok, Cwd} = file:get_cwd(),
    ok = file:set_cwd(Dir),
    try
        erlmcp_flow_test_util:with_env(
          design_block(),
          fun() ->
                  ?assertEqual(5000, erlmcp_flow_config:get(failure_detector, heartbeat_interval)),
                  ?assertEqual(3, erlmcp_flow_config:get(timeouts, max_retry_attempts)),
                  Pid = spawn(fun() -> receive {execute_task, T, _, From, Ref} -> From ! {task_result, Ref, {ok, T}} end end),
                  ok = erlmcp_flow:register_agent(<<"design">>, Pid, [<<"x">>]),
                  ?assertMatch({ok, #{n := 1}, _}, erlmcp_flow:execute(#{n => 1}, #{capabilities => [<<"x">>]})),
                  ok = erlmcp_flow:unregister_agent(<<"design">>)
          end),
        %% the model was saved on the way down, its directory made
        ?assert(filelib:is_regular(filename:join([Dir, "data", "q_table.bin"])))
    after
        ok = file:set_cwd(Cwd)
    end.

%% The retry settings (and the heartbeat) have two spellings: one given sets
%% both; both given must agree.
aliases_test_() ->
    [?_assertMatch({ok, #{timeouts := #{max_retry_attempts := 7}}},
                   erlmcp_flow_config:validate(#{failure_detector => #{max_retry_attempts => 7}})),
     ?_assertMatch({ok, #{failure_detector := #{max_retry_attempts := 7}}},
                   erlmcp_flow_config:validate(#{timeouts => #{max_retry_attempts => 7}})),
     ?_assertMatch({ok, #{timeouts := #{max_retry_attempts := 7}}},
                   erlmcp_flow_config:validate(#{timeouts => #{max_retry_attempts => 7},
                                                 failure_detector => #{max_retry_attempts => 7}})),
     ?_assertEqual({error, {conflicting_config, {failure_detector, max_retry_attempts}, 2,
                            {timeouts, max_retry_attempts}, 7}},
                   erlmcp_flow_config:validate(#{timeouts => #{max_retry_attempts => 7},
                                                 failure_detector => #{max_retry_attempts => 2}})),
     ?_assertMatch({ok, #{failure_detector := #{heartbeat_interval := 250}}},
                   erlmcp_flow_config:validate(#{timeouts => #{heartbeat => 250}})),
     ?_assertMatch({error, {conflicting_config, _, _, _, _}},
                   erlmcp_flow_config:validate(#{timeouts => #{heartbeat => 250},
                                                 failure_detector => #{heartbeat_interval => 300}})),
     ?_assertEqual({error, {invalid_config, {byzantine, quorum_size}, 4}},
                   erlmcp_flow_config:validate(#{byzantine => #{byzantine_tolerance => 2,
                                                                quorum_size => 4}})),
     ?_assertEqual({error, {invalid_config, {failure_detector, max_retry_delay}, 50}},
                   erlmcp_flow_config:validate(#{failure_detector => #{max_retry_delay => 50}})),
     ?_assert(is_list(erlmcp_flow_config:format_error(
                        {conflicting_config, {failure_detector, max_retry_attempts}, 2,
                         {timeouts, max_retry_attempts}, 7})))].

%% An https:// collector is refused, and the message says why.
https_export_url_test() ->
    Url = <<"https://collector.example:4318/v1/traces">>,
    {error, {invalid_config, {export, url}, Url} = R} =
        erlmcp_flow_config:validate(#{export => #{url => Url}}),
    ?assertMatch({match, _}, re:run(erlmcp_flow_config:format_error(R),
                                    "only http:// collector URLs are supported")),
    {error, R2} = erlmcp_flow_config:validate(#{export => #{url => <<"ftp:/x">>}}),
    ?assertNotMatch({match, _}, re:run(erlmcp_flow_config:format_error(R2), "only http://")).
