%% @private
%% @doc Configuration of erlmcp_flow: the defaults, the validation of the
%% application environment, and the published, validated result.
%%
%% Each of the nine sections (`q_learning', `load_balancer', `circuit_breaker',
%% `failure_detector', `byzantine', `timeouts', `correlation', `metrics',
%% `export') is a map; a partial map given in
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

-export_type([config/0, section/0, error_reason/0]).

-type section() :: q_learning | load_balancer | circuit_breaker
                 | failure_detector | byzantine | timeouts | correlation | metrics | export.
-type config() :: #{section() => #{atom() => term()}, clock => system | manual}.
-type error_reason() :: {unknown_config_key, atom() | {section(), term()}}
                      | {invalid_config, section() | clock, term()}
                      | {invalid_config, {section(), atom()}, term()}.

-compile({no_auto_import, [get/1]}).

-define(KEY, erlmcp_flow_config).

%% One row per key: {Key, Default, Check}. A check is a predicate; the reason
%% for a refusal always names the section, the key and the value.
-spec schema() -> #{section() => [{atom(), term(), fun((term()) -> boolean())}]}.
schema() ->
    #{q_learning =>
          [{alpha, 0.1, fun is_unit_open_low/1},
           {gamma, 0.9, fun is_unit_open_high/1},
           {epsilon, 0.1, fun is_unit/1},
           {epsilon_min, 0.01, fun is_unit/1},
           {epsilon_decay, 0.995, fun is_unit_open_low/1},
           {epsilon_schedule, exponential, one_of([exponential, linear, cosine])},
           {softmax_temperature, 1.0, fun is_positive_number/1},
           {fast_threshold_ms, 50, fun is_positive_number/1},
           {slow_threshold_ms, 200, fun is_positive_number/1},
           {task_classes, 1, fun is_pos_integer/1},
           {model_path, undefined, fun is_optional_path/1},
           {save_interval, 1000, fun is_pos_integer/1}],
      load_balancer =>
          [{strategy, round_robin, fun is_strategy/1},
           {consistent_hash_vnodes, 150, fun is_pos_integer/1},
           {hash_balance_factor, infinity, fun is_balance_factor/1},
           {ewma_decay_ms, 10000, fun is_pos_integer/1}],
      circuit_breaker =>
          [{enabled, true, fun is_boolean/1},
           {failure_threshold, 5, fun is_pos_integer/1},
           {min_requests, 10, fun is_pos_integer/1},
           {failure_rate_threshold, 0.5, fun is_unit_open_low/1},
           {timeout, 30000, fun is_pos_integer/1},
           {half_open_max_requests, 3, fun is_pos_integer/1},
           {success_threshold, 3, fun is_pos_integer/1},
           {slow_call_threshold, infinity, fun is_timeout/1},
           {window_type, count, one_of([count, time])},
           {window_size, 20, fun is_pos_integer/1},
           {max_concurrent, 10, fun is_pos_integer/1},
           {max_waiting, 1000, fun is_non_neg_integer/1}],
      failure_detector =>
          [{heartbeat_interval, 1000, fun is_pos_integer/1},
           {phi_threshold, 8.0, fun is_positive_number/1},
           {min_samples, 10, fun is_pos_integer/1}],
      byzantine =>
          [{enabled, false, fun is_boolean/1},
           {quorum, 3, fun is_pos_integer/1},
           {vote_timeout, 5000, fun is_pos_integer/1},
           {blacklist_after, 3, fun is_pos_integer/1},
           {hmac_secret, undefined, fun is_optional_secret/1}],
      timeouts =>
          [{routing, 5000, fun is_pos_integer/1},
           {execution, 30000, fun is_timeout/1},
           {adaptive, false, fun is_boolean/1},
           {max_retry_attempts, 3, fun is_non_neg_integer/1},
           {base_retry_delay, 100, fun is_non_neg_integer/1},
           {max_retry_delay, 5000, fun is_non_neg_integer/1}],
      correlation =>
          [{ttl_ms, 3600000, fun is_pos_integer/1},
           {max_entries, 100000, fun is_pos_integer/1}],
      metrics =>
          [{interval_ms, 1000, fun is_pos_integer/1},
           {http, false, fun is_boolean/1},
           {ip, loopback, fun is_ip/1},
           {port, 9464, fun is_port_number/1}],
      export =>
          [{file, undefined, fun is_optional_path/1},
           {url, undefined, fun is_optional_http_url/1},
           {service_name, <<"erlmcp_flow">>, fun is_nonempty_binary/1},
           {batch_size, 512, fun is_pos_integer/1},
           {interval_ms, 1000, fun is_pos_integer/1},
           {queue_size, 65536, fun is_pos_integer/1},
           {max_file_bytes, 10485760, fun is_pos_integer/1},
           {max_files, 5, fun is_pos_integer/1},
           {http_timeout_ms, 5000, fun is_pos_integer/1}]}.

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
    Schema = schema(),
    maps:fold(
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
    Result = maps:fold(
               fun(_, _, {error, _} = E) -> E;
                  (Key, V, {ok, SAcc}) ->
                       case Checks of
                           #{Key := Check} ->
                               case Check(V) of
                                   true -> {ok, SAcc#{Key => V}};
                                   false -> {error, {invalid_config, {Section, Key}, V}}
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

%% Constraints between keys of one section.
cross_check(q_learning, #{fast_threshold_ms := F, slow_threshold_ms := S}, _)
  when S =< F ->
    {error, {invalid_config, {q_learning, slow_threshold_ms}, S}};
cross_check(q_learning, #{epsilon := E, epsilon_min := M}, _) when M > E ->
    {error, {invalid_config, {q_learning, epsilon_min}, M}};
cross_check(timeouts, #{base_retry_delay := B, max_retry_delay := M}, _) when M < B ->
    {error, {invalid_config, {timeouts, max_retry_delay}, M}};
cross_check(Section, Merged, Acc) ->
    {ok, Acc#{Section => Merged}}.

%% @doc Makes a validated configuration readable by every process.
-spec publish(config()) -> ok.
publish(Config) ->
    persistent_term:put(?KEY, Config).

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
format_error({invalid_config, {Section, Key}, Value}) ->
    lists:flatten(io_lib:format("erlmcp_flow: bad value ~p for ~p in section ~p",
                                [Value, Key, Section]));
format_error({invalid_config, clock, Value}) ->
    lists:flatten(io_lib:format("erlmcp_flow: clock must be system or manual, got ~p", [Value]));
format_error({invalid_config, Section, Value}) ->
    lists:flatten(io_lib:format("erlmcp_flow: section ~p must be a map, got ~p",
                                [Section, Value])).

%% Checks

is_unit(V) -> is_number(V) andalso V >= 0 andalso V =< 1.
is_unit_open_low(V) -> is_number(V) andalso V > 0 andalso V =< 1.
is_unit_open_high(V) -> is_number(V) andalso V >= 0 andalso V < 1.
is_positive_number(V) -> is_number(V) andalso V > 0.
is_pos_integer(V) -> is_integer(V) andalso V > 0.
is_non_neg_integer(V) -> is_integer(V) andalso V >= 0.
is_timeout(infinity) -> true;
is_timeout(V) -> is_pos_integer(V).
is_balance_factor(infinity) -> true;
is_balance_factor(V) -> is_number(V) andalso V > 1.
is_optional_path(undefined) -> true;
is_optional_path(V) -> (is_binary(V) orelse io_lib:char_list(V)) andalso V =/= "" andalso V =/= <<>>.
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
is_strategy(V) -> lists:member(V, erlmcp_flow_router:strategies()).
one_of(Values) -> fun(V) -> lists:member(V, Values) end.
