%% @private
%% @doc Configuration of erlmcp_flow: the defaults, the validation of the
%% application environment, and the published, validated result.
%%
%% Each of the eleven sections (`q_learning', `load_balancer',
%% `circuit_breaker', `failure_detector', `byzantine', `cluster', `timeouts',
%% `correlation', `metrics', `export', `registry') is a map; a partial map given in
%% the application environment is merged over the section's defaults. Unknown
%% sections, unknown keys and bad values are refused with a reason that names
%% them, and the application does not start.
-module(erlmcp_flow_config).

%% API
-export([defaults/0]).
-export([load/0]).
-export([validate/1]).
-export([publish/1]).
-export([unpublish/0]).
-export([get/1]).
-export([get/2]).
-export([format_error/1]).
-export([clock/0]).
-export([max_ms/0]).
-export([strategies/0]).
-export([export_enabled/1]).

-export_type([config/0, section/0, error_reason/0]).

-type section() :: q_learning | load_balancer | circuit_breaker
                 | failure_detector | byzantine | cluster | timeouts | correlation | metrics
                 | export | registry | transports | mcp.
-type config() :: #{section() => #{atom() => term()}, clock => system | manual}.
-type error_reason() :: {unknown_config_key, atom() | {section(), term()}}
                      | {invalid_config, section() | clock, term()}
                      | {invalid_config, {section(), atom()}, term()}
                      | {conflicting_config, {section(), atom()}, term(), {section(), atom()},
                         term()}.

-compile({no_auto_import, [get/1]}).

-define(KEY, erlmcp_flow_config).

%% The longest time any key may give, in milliseconds: 2^32 - 1, the
%% longest `receive ... after' and timer the VM allows (about 49.7 days).
-define(MAX_MS, 4294967295).
%% Other upper bounds, each documented with its key; the Rust core enforces
%% the same ones for what it allocates.
-define(MAX_VNODES, 1000).
-define(MAX_TASK_CLASSES, 256).
-define(MAX_WINDOW_CALLS, 10000).
-define(MAX_WINDOW_MS, 600000).
-define(MAX_HALF_OPEN, 10000).
-define(MAX_COUNT, 1000000).
-define(MAX_CORRELATION_ENTRIES, 10000000).
-define(MAX_RETRIES, 100).

%% One row per key: {Key, Default, Check}. A check is a predicate; the reason
%% for a refusal always names the section, the key and the value.
-spec schema() -> #{section() => [{atom(), term(), fun((term()) -> boolean())}]}.
schema() ->
    #{q_learning =>
          [{alpha, 0.1, fun is_unit_open_low/1},
           {gamma, 0.9, fun is_unit_open_high/1},
           {epsilon, 0.1, fun is_unit/1},
           {epsilon_min, 0.001, fun is_unit/1},
           {epsilon_decay, 0.995, fun is_unit_open_low/1},
           {epsilon_schedule, exponential, one_of([exponential, linear, cosine])},
           {softmax_temperature, 1.0, fun is_positive_number/1},
           {fast_threshold_ms, 50, ms(number)},
           {slow_threshold_ms, 200, ms(number)},
           {task_classes, 1, int(1, ?MAX_TASK_CLASSES)},
           {model_path, undefined, fun is_optional_path/1},
           %% an idle agent with no news for this long is tried again (0: never)
           {stale_after_ms, 3000, ms(non_neg_integer)},
           {save_interval, 1000, int(1, ?MAX_MS)}],
      load_balancer =>
          [{strategy, round_robin, fun is_strategy/1},
           {consistent_hash_vnodes, 150, int(1, ?MAX_VNODES)},
           {hash_balance_factor, infinity, fun is_balance_factor/1},
           {ewma_decay_ms, 3000, ms(integer)},
           %% past this many candidates the scanning strategies sample
           {sample_above, 256, fun is_sample_above/1}],
      circuit_breaker =>
          [{enabled, true, fun is_boolean/1},
           {failure_threshold, 5, int(1, ?MAX_COUNT)},
           {min_requests, 10, int(1, ?MAX_COUNT)},
           {failure_rate_threshold, 0.5, fun is_unit_open_low/1},
           {timeout, 30000, ms(integer)},
           {half_open_max_requests, 3, int(1, ?MAX_HALF_OPEN)},
           {success_threshold, 3, int(1, ?MAX_COUNT)},
           {slow_call_threshold, infinity, ms(timeout)},
           {window_type, count, one_of([count, time])},
           %% at most MAX_WINDOW_CALLS calls or MAX_WINDOW_MS ms (cross_check)
           {window_size, 20, int(1, ?MAX_WINDOW_MS)},
           {max_concurrent, 10, int(1, ?MAX_COUNT)},
           {max_waiting, 1000, int(0, ?MAX_COUNT)}],
      failure_detector =>
          [{heartbeat_interval, 1000, ms(integer)},
           {phi_threshold, 8.0, fun is_positive_number/1},
           {min_samples, 10, int(1, ?MAX_COUNT)},
           %% the design's names for the timeouts section's retry settings
           {max_retry_attempts, 3, int(0, ?MAX_RETRIES)},
           {base_retry_delay, 100, ms(non_neg_integer)},
           {max_retry_delay, 5000, ms(non_neg_integer)}],
      byzantine =>
          [{enabled, false, fun is_boolean/1},
           {byzantine_tolerance, 1, int(0, 1000)},
           {quorum_size, 3, int(1, 2001)},
           {signature_algorithm, hmac_sha256, one_of([hmac_sha256])},
           {vote_timeout, 500, ms(integer)},
           {blacklist_threshold, 0.3, fun is_unit_open_low/1},
           {min_votes, 10, int(1, ?MAX_COUNT)},
           {blacklist_ttl_ms, infinity, ms(timeout)},
           {replay_window_ms, 30000, ms(integer)},
           {on_no_quorum, best_effort, one_of([best_effort, error])},
           {hmac_secret, undefined, fun is_optional_secret/1},
           {hmac_secret_file, undefined, fun is_optional_path/1}],
      cluster =>
          [{scope, erlmcp_flow, fun is_atom/1},
           %% mirror: every node holds every agent of the cluster; summary:
           %% each node publishes per capability set a summary of its agents,
           %% a task goes to a node by those and the node picks the agent
           {mode, mirror, one_of([mirror, summary])},
           %% summary mode: a changed summary is published at most this often
           {summary_interval_ms, 100, ms(integer)},
           %% summary mode: the load in a summary is refreshed this often
           {summary_refresh_ms, 1000, ms(integer)},
           %% summary mode: agents of each node its peers mirror and route
           %% to directly (0: every task for another node is forwarded)
           {direct_agents, 32, int(0, 100000)}],
      %% MCP servers started as agents at boot (erlmcp_flow_mcp)
      mcp =>
          [{servers, [], fun is_mcp_servers/1},
           %% Streamable HTTP sessions open at most (past it the least
           %% recently used idle one ends), and per client address
           {max_sessions, 10000, int(1, 1000000)},
           {max_sessions_per_client, 1000, int(1, 1000000)}],
      %% the JSON-RPC codec's limits (the transports to come read them too)
      transports =>
          [{http, #{}, fun is_http_transport/1},
           {tcp, #{}, fun is_tcp_transport/1},
           {max_message_bytes, 1048576, int(1, 64 * 1048576)},
           %% JSON-RPC requests in flight over TCP on the node (every
           %% connection), and their bytes: past either the answer is -32002
           {max_in_flight, 4096, int(1, ?MAX_COUNT)},
           {max_in_flight_bytes, 67108864, int(1, 4096 * 1048576)},
           {max_depth, 64, int(1, 128)},
           {max_batch, 100, int(1, 10000)}],
      timeouts =>
          [{routing, 5000, ms(integer)},
           {execution, 30000, ms(timeout)},
           {heartbeat, 1000, ms(integer)},
           {adaptive, false, fun is_boolean/1},
           {max_retry_attempts, 3, int(0, ?MAX_RETRIES)},
           {base_retry_delay, 100, ms(non_neg_integer)},
           {max_retry_delay, 5000, ms(non_neg_integer)}],
      correlation =>
          [{ttl_ms, 3600000, ms(integer)},
           {max_entries, 100000, int(1, ?MAX_CORRELATION_ENTRIES)}],
      metrics =>
          [{interval_ms, 1000, ms(integer)},
           {http, false, fun is_boolean/1},
           {ip, loopback, fun is_ip/1},
           {port, 9464, fun is_port_number/1},
           {max_connections, 64, int(1, 65536)},
           {request_timeout_ms, 5000, ms(integer)},
           {idle_timeout_ms, 60000, ms(integer)},
           {rate_limit, 1000, fun is_rate_limit/1},
           {tls, undefined, fun is_tls/1},
           %% per-agent series in /metrics at most; the rest aggregated
           {max_agent_series, 1000, int(0, ?MAX_COUNT)}],
      export =>
          [{file, undefined, fun is_optional_path/1},
           {url, undefined, fun is_optional_http_url/1},
           {service_name, <<"erlmcp_flow">>, fun is_nonempty_binary/1},
           {batch_size, 512, int(1, 10000)},
           {interval_ms, 1000, ms(integer)},
           {queue_size, 65536, int(1, ?MAX_COUNT)},
           {max_file_bytes, 10485760, int(1, 1 bsl 40)},
           {max_files, 5, int(1, 100)},
           {http_timeout_ms, 5000, ms(integer)}],
      registry =>
          %% native: names in the registry's ETS table; gproc: gproc `n'
          %% keys (the gproc application must run); auto: gproc when it runs
          [{backend, native, one_of([native, gproc, auto])}]}.

%% Keys the design spells in two places: `{Section, Key}' given in the
%% environment sets the other as well; both given with different values is
%% refused.
-spec aliases() -> [{{section(), atom()}, {section(), atom()}}].
aliases() ->
    [{{failure_detector, max_retry_attempts}, {timeouts, max_retry_attempts}},
     {{failure_detector, base_retry_delay}, {timeouts, base_retry_delay}},
     {{failure_detector, max_retry_delay}, {timeouts, max_retry_delay}},
     {{timeouts, heartbeat}, {failure_detector, heartbeat_interval}}].

%% @doc The longest time, in milliseconds, any configuration key, requirement
%% or option may give: 2^32 - 1.
-spec max_ms() -> pos_integer().
max_ms() ->
    ?MAX_MS.

%% @doc The strategies this build implements: the values
%% `load_balancer.strategy' and a task's `strategy' may take.
-spec strategies() -> [erlmcp_flow:strategy(), ...].
strategies() ->
    [round_robin, least_connections, weighted, consistent_hash, p2c_ewma, q_learning].

%% @doc Whether the `export' section names a sink (a file or a collector
%% URL): finished spans are queued for export only then.
-spec export_enabled(#{atom() => term()}) -> boolean().
export_enabled(#{file := undefined, url := undefined}) -> false;
export_enabled(#{}) -> true.

%% @doc Every section with its default values, and the clock.
-spec defaults() -> config().
defaults() ->
    (maps:map(fun(_, Rows) -> maps:from_list([{K, D} || {K, D, _} <- Rows]) end, schema()))#{
        clock => system}.

%% @doc Reads and validates the application environment of `erlmcp_flow'.
-spec load() -> {ok, config()} | {error, error_reason()}.
load() ->
    validate(maps:from_list(application:get_all_env(erlmcp_flow))).

%% @doc Validates a map of sections (each a partial map) and merges it over
%% the defaults.
-spec validate(map()) -> {ok, config()} | {error, error_reason()}.
validate(Env) when is_map(Env) ->
    case merge(Env) of
        {ok, Config} -> unalias(Env, Config);
        {error, _} = E -> E
    end.

%% Sections and keys are checked in sorted order, so that of several bad
%% ones the same is named whatever order the maps iterate in.
merge(Env) ->
    Schema = schema(),
    fold_sorted(
      fun(_, _, {error, _} = E) -> E;
         %% The time seam: `manual' makes the router's clock stand still
         %% except when moved by erlmcp_flow_registry:advance_clock/1 (tests).
         (clock, V, {ok, Acc}) when V =:= system; V =:= manual -> {ok, Acc#{clock => V}};
         (clock, V, {ok, _}) -> {error, {invalid_config, clock, V}};
         (Section, Value, {ok, Acc}) ->
              case Schema of
                  #{Section := Rows} -> merge_section(Section, Value, Rows, Acc);
                  #{} -> {error, {unknown_config_key, Section}}
              end
      end, {ok, defaults()}, Env).

merge_section(Section, Value, Rows, Acc) when is_map(Value) ->
    Checks = maps:from_list([{K, C} || {K, _, C} <- Rows]),
    Result = fold_sorted(
               fun(_, _, {error, _} = E) -> E;
                  (Key, V, {ok, SAcc}) ->
                       case Checks of
                           #{Key := Check} ->
                               case Check(V) of
                                   true -> {ok, SAcc#{Key => V}};
                                   false -> {error, {invalid_config, {Section, Key}, shown(Key, V)}}
                               end;
                           #{} -> {error, {unknown_config_key, {Section, Key}}}
                       end
               end, {ok, maps:get(Section, Acc)}, Value),
    case Result of
        {ok, Merged} -> cross_check(Section, Merged, Acc);
        {error, _} = E -> E
    end;
merge_section(Section, Value, _Rows, _Acc) ->
    {error, {invalid_config, Section, Value}}.

fold_sorted(Fun, Acc0, Map) ->
    lists:foldl(fun({K, V}, Acc) -> Fun(K, V, Acc) end, Acc0, lists:sort(maps:to_list(Map))).

%% Constraints between keys of one section.
cross_check(q_learning, #{fast_threshold_ms := F, slow_threshold_ms := S}, _)
  when S =< F ->
    {error, {invalid_config, {q_learning, slow_threshold_ms}, S}};
cross_check(q_learning, #{epsilon := E, epsilon_min := M}, _) when M > E ->
    {error, {invalid_config, {q_learning, epsilon_min}, M}};
cross_check(Section, #{base_retry_delay := B, max_retry_delay := M}, _)
  when M < B, (Section =:= timeouts orelse Section =:= failure_detector) ->
    {error, {invalid_config, {Section, max_retry_delay}, M}};
cross_check(circuit_breaker, #{window_type := count, window_size := N}, _)
  when N > ?MAX_WINDOW_CALLS ->
    {error, {invalid_config, {circuit_breaker, window_size}, N}};
cross_check(byzantine, #{byzantine_tolerance := F, quorum_size := Q}, _) when Q < 2 * F + 1 ->
    {error, {invalid_config, {byzantine, quorum_size}, Q}};
cross_check(byzantine, #{enabled := true, hmac_secret := undefined, hmac_secret_file := undefined}, _) ->
    %% quorum by default needs a secret to sign votes with
    {error, {invalid_config, {byzantine, enabled}, true}};
cross_check(Section, Merged, Acc) ->
    {ok, Acc#{Section => Merged}}.

%% The design's second spelling of a key: whichever the environment gives
%% sets both; both given and different is a conflict.
unalias(Env, Config) ->
    lists:foldl(
      fun(_, {error, _} = E) -> E;
         ({{S1, K1}, {S2, K2}}, {ok, C}) ->
              case {given(Env, S1, K1), given(Env, S2, K2)} of
                  {{ok, V}, {ok, V}} -> {ok, C};
                  {{ok, V1}, {ok, V2}} -> {error, {conflicting_config, {S1, K1}, V1, {S2, K2}, V2}};
                  {{ok, V}, error} -> {ok, put_key(C, S2, K2, V)};
                  {error, {ok, V}} -> {ok, put_key(C, S1, K1, V)};
                  {error, error} -> {ok, C}
              end
      end, {ok, Config}, aliases()).

given(Env, Section, Key) ->
    case Env of
        #{Section := #{Key := V}} -> {ok, V};
        #{} -> error
    end.

put_key(Config, Section, Key, Value) ->
    Config#{Section := (maps:get(Section, Config))#{Key := Value}}.

%% @doc Makes a validated configuration readable by every process. The
%% cluster's secret is not in it (`redacted'): the byzantine detector reads
%% it from the environment once, into the Rust core.
-spec publish(config()) -> ok.
publish(#{byzantine := #{hmac_secret := S} = B} = Config) when is_binary(S) ->
    persistent_term:put(?KEY, Config#{byzantine := B#{hmac_secret := redacted}});
publish(Config) ->
    persistent_term:put(?KEY, Config).

%% A secret's value never appears in an error (nor so in a log line).
shown(hmac_secret, _) -> redacted;
shown(_, #{token := T} = V) when T =/= undefined -> V#{token := redacted};
shown(_, V) -> V.

%% @doc Removes the published configuration.
-spec unpublish() -> ok.
unpublish() ->
    _ = persistent_term:erase(?KEY),
    ok.

%% @doc One section of the published configuration (defaults when the
%% application has not published one).
-spec get(section()) -> #{atom() => term()}.
get(Section) ->
    maps:get(Section, published()).

%% @doc One key of one section.
-spec get(section(), atom()) -> term().
get(Section, Key) ->
    maps:get(Key, get(Section)).

%% @doc The router's clock: `system', or `manual' for tests.
-spec clock() -> system | manual.
clock() ->
    maps:get(clock, published()).

%% The published configuration; the defaults are only built when there is
%% none (a default argument to persistent_term:get/2 would build them on
%% every call, and this is read on every task).
published() ->
    case persistent_term:get(?KEY, undefined) of
        undefined -> defaults();
        Config -> Config
    end.

%% @doc A human sentence for a configuration error.
-spec format_error(error_reason()) -> string().
format_error({unknown_config_key, {Section, Key}}) ->
    lists:flatten(io_lib:format("erlmcp_flow: unknown configuration key ~p in section ~p",
                                [Key, Section]));
format_error({unknown_config_key, Section}) ->
    lists:flatten(io_lib:format("erlmcp_flow: unknown configuration section ~p", [Section]));
format_error({invalid_config, {export, url}, Value}) ->
    case is_https(Value) of
        true ->
            lists:flatten(io_lib:format("erlmcp_flow: export.url ~p: only http:// collector URLs "
                                        "are supported (the exporter does not start TLS)",
                                        [Value]));
        false ->
            lists:flatten(io_lib:format("erlmcp_flow: bad value ~p for url in section export "
                                        "(an http:// URL with a host)", [Value]))
    end;
format_error({invalid_config, {Section, Key}, Value}) ->
    lists:flatten(io_lib:format("erlmcp_flow: bad value ~p for ~p in section ~p",
                                [Value, Key, Section]));
format_error({conflicting_config, {S1, K1}, V1, {S2, K2}, V2}) ->
    lists:flatten(io_lib:format("erlmcp_flow: ~p.~p (~p) and ~p.~p (~p) are the same setting "
                                "and must not differ; give one of them", [S1, K1, V1, S2, K2, V2]));
format_error({invalid_config, clock, Value}) ->
    lists:flatten(io_lib:format("erlmcp_flow: clock must be system or manual, got ~p", [Value]));
format_error({invalid_config, Section, Value}) ->
    lists:flatten(io_lib:format("erlmcp_flow: section ~p must be a map, got ~p",
                                [Section, Value])).

%% Checks

is_unit(V) -> is_number(V) andalso V >= 0 andalso V =< 1.
%% An integer within [Min, Max].
int(Min, Max) -> fun(V) -> is_integer(V) andalso V >= Min andalso V =< Max end.
%% A time in milliseconds, at most ?MAX_MS: a positive integer (`integer'),
%% or also 0 (`non_neg_integer'), or also `infinity' (`timeout'), or a
%% positive number (`number').
ms(integer) -> int(1, ?MAX_MS);
ms(non_neg_integer) -> int(0, ?MAX_MS);
ms(timeout) -> fun(infinity) -> true; (V) -> is_integer(V) andalso V > 0 andalso V =< ?MAX_MS end;
ms(number) -> fun(V) -> is_number(V) andalso V > 0 andalso V =< ?MAX_MS end.
is_unit_open_low(V) -> is_number(V) andalso V > 0 andalso V =< 1.
is_unit_open_high(V) -> is_number(V) andalso V >= 0 andalso V < 1.
is_positive_number(V) -> is_number(V) andalso V > 0 andalso V < 1.0e300.
is_balance_factor(infinity) -> true;
is_balance_factor(V) -> is_number(V) andalso V > 1.
%% transports.http: a map of enabled, ip, port, token, max_connections,
%% request_timeout_ms, idle_timeout_ms, max_waiting, max_waiting_per_client,
%% rate_limit, allowed_origins and tls (defaults in erlmcp_flow_rpc_http);
%% transports.tcp: enabled, ip, port, token, max_connections,
%% idle_timeout_ms, rate_limit, tls, max_unauthenticated, auth_timeout_ms,
%% max_in_flight and max_agents (erlmcp_flow_rpc_tcp).
is_http_transport(M) ->
    is_transport(M, [request_timeout_ms, max_waiting, max_waiting_per_client, allowed_origins]).
is_tcp_transport(M) ->
    is_transport(M, [request_timeout_ms, max_unauthenticated, auth_timeout_ms, max_in_flight,
                     max_agents]).
is_transport(M, Extra) when is_map(M) ->
    Checks = maps:with([enabled, ip, port, token, max_connections, idle_timeout_ms, rate_limit, tls
                        | Extra],
                       #{enabled => fun is_boolean/1, ip => fun is_ip/1,
                         port => fun is_port_number/1, token => fun is_optional_secret/1,
                         max_connections => int(1, 65536), request_timeout_ms => ms(integer),
                         idle_timeout_ms => ms(integer),
                         max_waiting => int(1, 65536), max_waiting_per_client => int(1, 65536),
                         rate_limit => fun is_rate_limit/1,
                         allowed_origins => fun is_origin_list/1,
                         tls => fun is_tls/1,
                         max_unauthenticated => int(1, 65536), auth_timeout_ms => ms(integer),
                         max_in_flight => int(1, 65536), max_agents => int(1, ?MAX_COUNT)}),
    maps:fold(fun(K, V, Ok) ->
                      Ok andalso case Checks of
                                     #{K := Check} -> Check(V);
                                     #{} -> false
                                 end
              end, true, M);
is_transport(_, _) ->
    false.
is_rate_limit(infinity) -> true;
is_rate_limit(V) -> is_integer(V) andalso V >= 1 andalso V =< 100000000.
is_origin_list(L) when is_list(L) ->
    lists:all(fun(O) -> is_binary(O) andalso O =/= <<>> andalso byte_size(O) =< 1024 end, L);
is_origin_list(_) -> false.
%% A listener's tls setting (translated by erlmcp_flow_tls): certfile and
%% keyfile, and cacertfile, client_certs (none | optional | required: a
%% cacertfile then) and versions (tlsv1.3 and tlsv1.2).
is_tls(undefined) ->
    true;
is_tls(#{certfile := C, keyfile := K} = Tls) ->
    Known = [certfile, keyfile, cacertfile, client_certs, versions],
    Certs = maps:get(client_certs, Tls, none),
    Versions = maps:get(versions, Tls, ['tlsv1.3', 'tlsv1.2']),
    is_path(C) andalso is_path(K)
        andalso maps:keys(maps:without(Known, Tls)) =:= []
        andalso is_path(maps:get(cacertfile, Tls, "x"))
        andalso lists:member(Certs, [none, optional, required])
        andalso (Certs =:= none orelse maps:is_key(cacertfile, Tls))
        andalso is_list(Versions) andalso Versions =/= []
        andalso lists:all(fun(V) -> lists:member(V, ['tlsv1.3', 'tlsv1.2']) end, Versions);
is_tls(_) ->
    false.
is_path(P) -> (is_binary(P) andalso P =/= <<>>) orelse (io_lib:char_list(P) andalso P =/= []).
is_sample_above(infinity) -> true;
is_sample_above(V) -> is_integer(V) andalso V >= 1 andalso V =< ?MAX_COUNT.
is_optional_path(undefined) -> true;
is_optional_path(V) -> (is_binary(V) orelse io_lib:char_list(V)) andalso V =/= "" andalso V =/= <<>>.
is_mcp_servers(L) when is_list(L) ->
    lists:all(fun(#{id := Id} = S) when is_binary(Id), Id =/= <<>> ->
                      case S of
                          #{command := [_ | _]} -> true;
                          #{url := U} -> is_binary(U) orelse io_lib:printable_list(U);
                          _ -> false
                      end;
                 (_) -> false
              end, L);
is_mcp_servers(_) -> false.

is_optional_secret(undefined) -> true;
is_optional_secret(V) -> is_binary(V) andalso byte_size(V) >= 16.
is_nonempty_binary(V) -> is_binary(V) andalso V =/= <<>>.
is_port_number(V) -> is_integer(V) andalso V >= 0 andalso V =< 65535.
is_ip(V) when V =:= loopback; V =:= any -> true;
is_ip(V) when is_tuple(V) -> inet:is_ip_address(V);
is_ip(_) -> false.
%% A collector's URL: http only (the exporter does not start TLS).
is_optional_http_url(undefined) -> true;
is_optional_http_url(V) when is_binary(V); is_list(V) ->
    case catch uri_string:parse(unicode:characters_to_list(V)) of
        #{scheme := Scheme, host := [_ | _]} -> string:lowercase(Scheme) =:= "http";
        _ -> false
    end;
is_optional_http_url(_) -> false.
is_https(V) when is_binary(V); is_list(V) ->
    case catch uri_string:parse(unicode:characters_to_list(V)) of
        #{scheme := Scheme} -> string:lowercase(Scheme) =:= "https";
        _ -> false
    end;
is_https(_) ->
    false.
is_strategy(V) -> lists:member(V, strategies()).
one_of(Values) -> fun(V) -> lists:member(V, Values) end.
