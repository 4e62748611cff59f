%% @private
%% @doc The application: validates and publishes the configuration, checks
%% what the tree will need from the node, then starts the supervision tree.
%% A bad configuration stops the start with a reason naming the key and the
%% value; a `/metrics' port that cannot be bound with `{metrics_http, Ip,
%% Port, Why}'; `registry.backend = gproc' without gproc running with
%% `{gproc_not_running, gproc}'. Each is logged as one sentence, and
%% returned as the start's own reason (not from deep in the tree).
-module(erlmcp_flow_app).
-behaviour(application).

%% application callbacks
-export([start/2]).
-export([stop/1]).

-spec start(application:start_type(), term()) -> {ok, pid()} | {error, term()}.
start(_StartType, _Args) ->
    case erlmcp_flow_config:load() of
        {ok, Config} ->
            ok = erlmcp_flow_config:publish(Config),
            case preflight() of
                ok ->
                    case erlmcp_flow_sup:start_link() of
                        {ok, _} = Ok ->
                            Ok;
                        {error, Nested} ->
                            erlmcp_flow_config:unpublish(),
                            {error, root_cause(Nested)}
                    end;
                {error, Reason} ->
                    erlmcp_flow_config:unpublish(),
                    logger:error("~ts", [format_error(Reason)]),
                    {error, Reason}
            end;
        {error, Reason} ->
            logger:error("~ts", [erlmcp_flow_config:format_error(Reason)]),
            {error, Reason}
    end.

-spec stop(term()) -> ok.
stop(_State) ->
    erlmcp_flow_config:unpublish().

%% What the tree needs from the node, checked before any process starts.
preflight() ->
    case erlmcp_flow_registry_backend:select(erlmcp_flow_config:get(registry, backend)) of
        {ok, _} ->
            first_error([fun erlmcp_flow_metrics_http:check/0, fun erlmcp_flow_rpc_http:check/0,
                         fun erlmcp_flow_rpc_tcp:check/0]);
        {error, _} = E -> E
    end.

first_error([]) -> ok;
first_error([Check | Rest]) ->
    case Check() of
        ok -> first_error(Rest);
        {error, _} = E -> E
    end.

%% The reason a child gave, without the supervisors' wrapping.
root_cause({shutdown, {failed_to_start_child, _Id, Reason}}) -> root_cause(Reason);
root_cause(Reason) -> Reason.

format_error({metrics_http, Ip, Port, Why}) ->
    io_lib:format("erlmcp_flow: cannot listen for /metrics on ~ts port ~b: ~ts (~p); "
                  "change metrics.port or metrics.ip, or set metrics.http to false",
                  [inet:ntoa(Ip), Port, inet:format_error(Why), Why]);
format_error({rpc_http, Ip, Port, Why}) ->
    io_lib:format("erlmcp_flow: cannot listen for JSON-RPC over HTTP on ~ts port ~b: ~ts (~p); "
                  "change transports.http's port or ip, or set its enabled to false",
                  [inet:ntoa(Ip), Port, inet:format_error(Why), Why]);
format_error({rpc_tcp, Ip, Port, Why}) ->
    io_lib:format("erlmcp_flow: cannot listen for JSON-RPC over TCP on ~ts port ~b: ~ts (~p); "
                  "change transports.tcp's port or ip, or set its enabled to false",
                  [inet:ntoa(Ip), Port, inet:format_error(Why), Why]);
format_error({gproc_not_running, gproc}) ->
    "erlmcp_flow: registry.backend is gproc, but the gproc application is not running; "
    "start gproc first (list it in your application's applications) or set "
    "registry => #{backend => native | auto}".
