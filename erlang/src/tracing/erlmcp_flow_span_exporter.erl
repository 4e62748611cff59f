%% @doc Exports finished spans as OpenTelemetry OTLP/JSON, off the hot path.
%%
%% Enabled by the `export' configuration section: `file' (a path: one
%% `ExportTraceServiceRequest' per line, rotated past `max_file_bytes' into
%% `File.1' .. `File.N-1' for `max_files' files in all) and/or `url' (an
%% http URL of a collector's OTLP/HTTP endpoint, e.g.
%% `http://127.0.0.1:4318/v1/traces', POSTed to with `http_timeout_ms').
%%
%% The core queues finished spans (at most `queue_size'; past it they are
%% counted in `export_dropped' and not queued, so routing never waits for the
%% exporter). Every `interval_ms' this process drains the queue in batches
%% of `batch_size' spans, each encoded to JSON by the core, and writes them to
%% the sinks. A failed write or POST is counted (`export_failures',
%% `spans_lost' in `erlmcp_flow:stats/0'), logged once when a sink starts
%% failing and once when it recovers, and never retried: the spans of that
%% batch are lost to that sink, and routing is not affected.
-module(erlmcp_flow_span_exporter).
-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").

%% API
-export([start_link/0]).
-export([flush/0]).

%% gen_server callbacks
-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).
-export([terminate/2]).

%% Batches written per interval at most, so that the process stays responsive.
-define(MAX_BATCHES_PER_TICK, 64).
-define(HTTPC_PROFILE, erlmcp_flow_span_export).

-record(file, {path :: file:filename_all(),
               fd :: file:io_device() | undefined,
               size = 0 :: non_neg_integer(),
               max_bytes :: pos_integer(),
               max_files :: pos_integer(),
               failing = false :: boolean()}).
-record(http, {url :: string(),
               timeout :: pos_integer(),
               failing = false :: boolean()}).
-record(state, {config :: map(),
                sinks :: [#file{} | #http{}]}).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Exports every span queued now; returns how many it took from the
%% queue (written, or lost to a failing sink and counted in `spans_lost').
-spec flush() -> non_neg_integer().
flush() ->
    gen_server:call(?MODULE, flush, infinity).

%%====================================================================
%% gen_server callbacks
%%====================================================================

%% @private
-spec init([]) -> {ok, #state{}}.
init([]) ->
    process_flag(trap_exit, true),
    Config = erlmcp_flow_config:get(export),
    Sinks = [S || S <- [file_sink(Config), http_sink(Config)], S =/= none],
    erlang:send_after(maps:get(interval_ms, Config), self(), tick),
    {ok, #state{config = Config, sinks = Sinks}}.

%% @private
-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call(flush, _From, State) ->
    {N, State1} = drain(State, infinity, 0),
    {reply, N, State1};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info(tick, #state{config = #{interval_ms := Interval}} = State) ->
    {_, State1} = drain(State, ?MAX_BATCHES_PER_TICK, 0),
    erlang:send_after(Interval, self(), tick),
    {noreply, State1};
handle_info(_Info, State) ->
    {noreply, State}.

%% @private Exports what is left, then closes the file and the HTTP client.
-spec terminate(term(), #state{}) -> ok.
terminate(_Reason, State) ->
    {_, #state{sinks = Sinks}} = drain(State, ?MAX_BATCHES_PER_TICK, 0),
    lists:foreach(fun(#file{fd = undefined}) -> ok;
                     (#file{fd = Fd}) -> _ = file:close(Fd);
                     (#http{}) -> _ = inets:stop(httpc, ?HTTPC_PROFILE)
                  end, Sinks).

%%====================================================================
%% Internal functions
%%====================================================================

file_sink(#{file := undefined}) ->
    none;
file_sink(#{file := Path, max_file_bytes := Max, max_files := Files}) ->
    open(#file{path = Path, max_bytes = Max, max_files = Files}).

http_sink(#{url := undefined}) ->
    none;
http_sink(#{url := Url, http_timeout_ms := Timeout}) ->
    case inets:start(httpc, [{profile, ?HTTPC_PROFILE}]) of
        {ok, _} -> ok;
        {error, {already_started, _}} -> ok
    end,
    #http{url = unicode:characters_to_list(Url), timeout = Timeout}.

%% Batches until the queue is empty, `Left' batches went out, or a batch
%% failed on every sink: the rest waits for the next round, so that a
%% collector that hangs holds the exporter for one timeout per round, not
%% one per batch.
drain(State, 0, N) ->
    {N, State};
drain(#state{config = #{batch_size := Size, service_name := Service}, sinks = Sinks} = State,
      Left, N) ->
    case erlmcp_flow_nif:export_batch(erlmcp_flow_registry:router(), Size, Service) of
        {ok, 0, _} ->
            {N, State};
        {ok, Count, Json} ->
            Results = [write(Sink, Json) || Sink <- Sinks],
            Sinks1 = [S || {_, S} <- Results],
            Failed = length([failed || {{error, _}, _} <- Results]),
            case Failed of
                0 -> erlmcp_flow_metrics:add(spans_exported, Count);
                _ ->
                    erlmcp_flow_metrics:add(export_failures, Failed),
                    erlmcp_flow_metrics:add(spans_lost, Count)
            end,
            State1 = State#state{sinks = Sinks1},
            case Count < Size orelse Failed =:= length(Sinks) of
                true -> {N + Count, State1};
                false -> drain(State1, decrement(Left), N + Count)
            end
    end.

decrement(infinity) -> infinity;
decrement(N) -> N - 1.

write(#file{fd = undefined} = F, Json) ->
    %% the file could not be opened: try again
    case open(F) of
        #file{fd = undefined} = F1 -> {{error, closed}, F1};
        F1 -> write(F1, Json)
    end;
write(#file{} = F0, Json) ->
    Line = [Json, $\n],
    Bytes = iolist_size(Line),
    F = case F0#file.size > 0 andalso F0#file.size + Bytes > F0#file.max_bytes of
            true -> rotate(F0);
            false -> F0
        end,
    case F#file.fd =/= undefined andalso file:write(F#file.fd, Line) of
        ok -> {ok, recovered(F#file{size = F#file.size + Bytes})};
        Error -> {{error, Error}, failing(F, Error)}
    end;
write(#http{url = Url, timeout = Timeout} = H, Json) ->
    Request = {Url, [], "application/json", Json},
    case httpc:request(post, Request, [{timeout, Timeout}, {connect_timeout, Timeout}],
                       [{body_format, binary}], ?HTTPC_PROFILE) of
        {ok, {{_, Code, _}, _, _}} when Code >= 200, Code < 300 ->
            {ok, recovered(H)};
        Other ->
            {{error, Other}, failing(H, Other)}
    end.

open(#file{path = Path} = F) ->
    case filelib:ensure_dir(Path) of
        ok ->
            case file:open(Path, [append, raw, binary]) of
                {ok, Fd} ->
                    F#file{fd = Fd, size = filelib:file_size(Path)};
                {error, _} = E ->
                    failing(F#file{fd = undefined}, E)
            end;
        {error, _} = E ->
            failing(F#file{fd = undefined}, E)
    end.

%% File -> File.1 -> ... -> File.(max_files - 1); the oldest goes.
rotate(#file{path = Path, fd = Fd, max_files = Files} = F) ->
    _ = file:close(Fd),
    _ = file:delete(rotated(Path, Files - 1)),
    lists:foreach(fun(K) -> _ = file:rename(rotated(Path, K - 1), rotated(Path, K)) end,
                  lists:seq(Files - 1, 1, -1)),
    _ = file:delete(Path),
    open(F#file{fd = undefined, size = 0}).

rotated(Path, 0) -> Path;
rotated(Path, K) -> unicode:characters_to_list([Path, $., integer_to_list(K)]).

failing(#file{failing = false, path = P} = F, Why) ->
    ?LOG_WARNING("erlmcp_flow: exporting spans to ~ts failed: ~0p", [P, Why]),
    F#file{failing = true};
failing(#http{failing = false, url = U} = H, Why) ->
    ?LOG_WARNING("erlmcp_flow: exporting spans to ~ts failed: ~0p", [U, Why]),
    H#http{failing = true};
failing(Sink, _Why) ->
    Sink.

recovered(#file{failing = true, path = P} = F) ->
    ?LOG_NOTICE("erlmcp_flow: exporting spans to ~ts works again", [P]),
    F#file{failing = false};
recovered(#http{failing = true, url = U} = H) ->
    ?LOG_NOTICE("erlmcp_flow: exporting spans to ~ts works again", [U]),
    H#http{failing = false};
recovered(Sink) ->
    Sink.
