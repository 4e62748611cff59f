%% An erlmcp_flow_agent callback module whose answers tests choose per task:
%% #{op => echo, value => V}, #{op => fail}, #{op => crash}, #{op => hang},
%% #{op => later, value => V} (answers through reply/2 when told `release'),
%% #{op => later_bare, value => V} (the same, replying the bare value; both
%% tell the owner `{held, V}' when they hold the task),
%% #{op => return, value => V} (handle_task/3 returns V itself: a broken
%% contract unless V is one of its answers).
%% Every cancel is reported to the owner given at start; handle_info/2
%% answers `{noreply, S}' to `{noreply_ping, From}' and returns what
%% `{return, V}' says.
-module(erlmcp_flow_test_agent).
-behaviour(erlmcp_flow_agent).

-export([init/1, handle_task/3, handle_cancel/2, handle_info/2, terminate/2]).

init(#{owner := _} = S) -> {ok, S#{held => []}};
init(bad) -> {stop, bad_args}.

handle_task(#{op := echo, value := V}, _Ctx, S) -> {ok, V, S};
handle_task(#{op := fail}, _Ctx, S) -> {error, failed, S};
handle_task(#{op := reject, reason := R}, _Ctx, S) -> {reject, R, S};
handle_task(#{op := reject_later, reason := R}, Ctx, S) ->
    ok = erlmcp_flow_agent:reply(Ctx, {reject, R}),
    {noreply, S};
handle_task(#{op := crash}, _Ctx, _S) -> exit(crashed_on_purpose);
handle_task(#{op := hang}, _Ctx, S) -> {noreply, S};
handle_task(#{op := later, value := V}, Ctx, #{held := H, owner := Owner} = S) ->
    Owner ! {held, V},
    {noreply, S#{held := [{Ctx, V} | H]}};
handle_task(#{op := later_bare, value := V}, Ctx, #{held := H, owner := Owner} = S) ->
    Owner ! {held, V},
    {noreply, S#{held := [{Ctx, {bare, V}} | H]}};
handle_task(#{op := return, value := V}, _Ctx, _S) -> V;
handle_task(#{op := trace}, #{trace := Trace}, S) -> {ok, Trace, S};
%% one child span per name, as for calls it makes: their traceparents
handle_task(#{op := calls, names := Names}, Ctx, S) ->
    Headers = [begin
                   Child = erlmcp_flow_agent:start_span(Ctx, Name),
                   ok = erlmcp_flow_agent:end_span(Child, ok),
                   {error, already_ended} = erlmcp_flow_agent:end_span(Child, ok),
                   erlmcp_flow_correlation_tracker:format_traceparent(Child)
               end || Name <- Names],
    {ok, Headers, S};
%% a child span left open in the agent's state (closed as abandoned when
%% the agent dies)
handle_task(#{op := open_span}, Ctx, S) ->
    Child = erlmcp_flow_agent:start_span(Ctx, <<"held">>),
    {ok, maps:remove(span, Child), S#{held_span => Child}}.

handle_cancel(Ref, #{owner := Owner} = S) ->
    Owner ! {agent_cancelled, self(), Ref},
    {ok, S}.

handle_info(release, #{held := H} = S) ->
    [ok = erlmcp_flow_agent:reply(Ctx, answer(V)) || {Ctx, V} <- H],
    {ok, S#{held := []}};
handle_info({noreply_ping, From}, S) ->
    From ! {pong, self()},
    {noreply, S};
handle_info({return, V}, _S) ->
    V;
handle_info({ping, From}, S) ->
    From ! {pong, self()},
    {ok, S}.

answer({bare, V}) -> V;
answer(V) -> {ok, V}.

terminate(_Reason, #{owner := Owner}) ->
    Owner ! {terminated, self()}.
