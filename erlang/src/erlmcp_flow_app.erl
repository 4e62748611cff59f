%% @private
%% @doc The application: validates and publishes the configuration, then
%% starts the supervision tree. A bad configuration stops the start with a
%% reason naming the key and the value.
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
            erlmcp_flow_sup:start_link();
        {error, Reason} ->
            logger:error("~ts", [erlmcp_flow_config:format_error(Reason)]),
            {error, Reason}
    end.

-spec stop(term()) -> ok.
stop(_State) ->
    erlmcp_flow_config:unpublish().
