%% @doc erlmcp_flow's `telemetry' events, emitted through
%% `telemetry:execute/3' when the telemetry library is loaded in the node.
%%
%% telemetry is optional: erlmcp_flow does not depend on it at build time,
%% and without it loaded every emission is one `erlang:module_loaded/1'
%% check. With it loaded and no handler attached, an emission is one
%% handler lookup inside telemetry. A handler that raises is detached by
%% telemetry, as with any library.
%%
%% <ul>
%% <li>`[erlmcp_flow, task, start]': measurements `monotonic_time',
%%   `system_time'; metadata `trace_id', `strategy', `capabilities'.</li>
%% <li>`[erlmcp_flow, task, stop]': `monotonic_time', `duration'; the start's
%%   metadata and `agent_id' (`undefined' when none answered), `attempts',
%%   `outcome' (`ok' or `error'), `error' (the reason, on error).</li>
%% <li>`[erlmcp_flow, task, exception]': `monotonic_time', `duration'; the
%%   start's metadata and `kind', `reason', `stacktrace'. A defect inside
%%   erlmcp_flow, answered `{error, {internal_error, {Kind, Reason}}}'; a
%%   `task stop' follows.</li>
%% <li>`[erlmcp_flow, attempt, stop]': `monotonic_time', `duration';
%%   `trace_id', `span_id' (the attempt's), `agent_id', `attempt' (1, 2,
%%   ...), `outcome', `error' (on error).</li>
%% <li>`[erlmcp_flow, breaker, transition]': `monotonic_time'; `agent_id',
%%   `from', `to'.</li>
%% <li>`[erlmcp_flow, agent, register]': `monotonic_time'; `agent_id', `pid',
%%   `kind' (`agent' or `swarm'), `capabilities'.</li>
%% <li>`[erlmcp_flow, agent, unregister]': `monotonic_time'; the same and
%%   `reason' (`unregistered' or `{down, Why}').</li>
%% </ul>
%%
%% Durations and times are in `native' time units, as telemetry's own
%% spans use (`erlang:convert_time_unit/3' turns them into others).
-module(erlmcp_flow_telemetry).

%% API
-export([execute/3]).
-export([events/0]).
-export([enabled/0]).

-define(TELEMETRY, (telemetry_module())).

%% @doc Every event erlmcp_flow emits, for `telemetry:attach_many/4'.
-spec events() -> [[atom(), ...]].
events() ->
    [[erlmcp_flow, task, start], [erlmcp_flow, task, stop], [erlmcp_flow, task, exception],
     [erlmcp_flow, attempt, stop], [erlmcp_flow, breaker, transition],
     [erlmcp_flow, agent, register], [erlmcp_flow, agent, unregister]].

%% @doc Whether events are emitted: telemetry is loaded. A task's path
%% builds an event's measurements and metadata (clock reads, maps) only
%% then.
-spec enabled() -> boolean().
enabled() ->
    erlang:module_loaded(telemetry).

%% @doc Emits `[erlmcp_flow | Event]' when telemetry is loaded; never
%% raises (telemetry loaded but not started is no emission).
-spec execute([atom(), ...], #{atom() => number()}, map()) -> ok.
execute(Event, Measurements, Metadata) ->
    case erlang:module_loaded(telemetry) of
        true ->
            try ?TELEMETRY:execute([erlmcp_flow | Event], Measurements, Metadata) of
                _ -> ok
            catch
                error:_ -> ok
            end;
        false ->
            ok
    end.

%% Held in a variable: telemetry is not a build dependency, so xref and
%% dialyzer stay clean on nodes without it.
telemetry_module() -> telemetry.
