%% @doc The Q-learning model: when it is saved and loaded, and how to look
%% into it.
%%
%% The table itself lives in the Rust core and learns from every completed
%% task, whatever strategy chose the agent. This server owns its file: at
%% start it loads `q_learning.model_path' (a truncated, corrupt or
%% incompatible file is renamed aside to `<path>.bad-<unix time>' with a
%% warning, and the node starts fresh; the bad file is never overwritten; a
%% path that is not a regular file, or a file it cannot read, is left where
%% it is, logged, and saving is off);
%% then it saves the table whenever `q_learning.save_interval' more episodes
%% have been learned (checked every second) and when it stops. Saving encodes
%% on a dirty scheduler and writes a temporary file that is fsynced and
%% renamed over the model.
-module(erlmcp_flow_q_learning).
-behaviour(gen_server).

%% API
-export([start_link/0]).
-export([save/0]).
-export([load/1]).
-export([get_q_table/0]).
-export([reset/0]).
-export([explain/1]).

%% gen_server callbacks
-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).
-export([terminate/2]).

-define(CHECK_MS, 1000).

-record(state, {
    path :: undefined | binary(),
    interval :: pos_integer(),
    saved_at = 0 :: non_neg_integer()
}).

%%====================================================================
%% API
%%====================================================================

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Saves the table to `model_path' now.
-spec save() -> {ok, non_neg_integer()}
              | {error, no_model_path | not_started | {server_down, term()} | {atom(), string()}}.
save() ->
    call(save).

%% @doc Loads a saved table from `Path' into the running router: the rows of
%% registered agents take the saved values, the others are kept for agents
%% that register later. A bad file is refused and left as it is.
-spec load(file:filename_all()) ->
          {ok, none | {loaded, non_neg_integer(), non_neg_integer()}}
        | {error, {badarg, path} | not_started | {server_down, term()} | {atom(), string()}}.
load(Path) ->
    case to_path(Path) of
        {ok, P} -> call({load, P});
        error -> {error, {badarg, path}}
    end.

%% @doc The learned part of the table: per agent id (registered or not), the
%% visited states `{LoadLevel, SuccessBucket, LatencyBucket, TaskClass}' with
%% `{QValue, Visits}'.
-spec get_q_table() -> #{erlmcp_flow:agent_id() =>
                             #{erlmcp_flow_nif:state() => {float(), non_neg_integer()}}}
                     | {error, not_started}.
get_q_table() ->
    erlmcp_flow_registry:with_router(fun erlmcp_flow_nif:q_table/1).

%% @doc Forgets everything learned (values, visits, the epsilon schedule).
-spec reset() -> ok | {error, not_started}.
reset() ->
    erlmcp_flow_registry:with_router(fun erlmcp_flow_nif:q_reset/1).

%% @doc See `erlmcp_flow:explain/1'.
-spec explain(erlmcp_flow:requirements()) ->
          {ok, #{candidates := [map()], top := [{erlmcp_flow:agent_id(), float()}]}}
        | {error, term()}.
%% The requirements are checked as `execute/2' checks them.
explain(Requirements) ->
    case erlmcp_flow_requirements:check(Requirements) of
        {ok, #{capabilities := Caps} = Plan} ->
            Class = maps:get(task_class, Plan, undefined),
            erlmcp_flow_registry:with_router(
              fun(Router) ->
                      Candidates = erlmcp_flow_nif:explain(Router, Caps, Class),
                      Top = [{Id, P} || #{id := Id, softmax := P} <- lists:sublist(Candidates, 3)],
                      {ok, #{candidates => Candidates, top => Top}}
              end);
        {error, _} = E ->
            E
    end.

%%====================================================================
%% gen_server callbacks
%%====================================================================

%% @private
-spec init([]) -> {ok, #state{}}.
init([]) ->
    process_flag(trap_exit, true),
    Path = case erlmcp_flow_config:get(q_learning, model_path) of
               undefined -> undefined;
               P -> element(2, {ok, _} = to_path(P))
           end,
    State = #state{path = load_at_start(Path),
                   interval = erlmcp_flow_config:get(q_learning, save_interval),
                   saved_at = episodes()},
    erlang:send_after(?CHECK_MS, self(), check),
    {ok, State}.

%% @private
-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call(save, _From, #state{path = undefined} = State) ->
    {reply, {error, no_model_path}, State};
handle_call(save, _From, State) ->
    {Reply, State1} = do_save(State),
    {reply, Reply, State1};
handle_call({load, Path}, _From, State) ->
    {reply, erlmcp_flow_nif:q_load(erlmcp_flow_registry:router(), Path), State};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info(check, #state{path = Path, interval = Interval, saved_at = At} = State) ->
    erlang:send_after(?CHECK_MS, self(), check),
    case Path =/= undefined andalso episodes() >= At + Interval of
        true -> {noreply, element(2, do_save(State))};
        false -> {noreply, State}
    end;
handle_info(_Info, State) ->
    {noreply, State}.

%% @private
-spec terminate(term(), #state{}) -> ok.
terminate(_Reason, #state{path = undefined}) ->
    ok;
terminate(_Reason, State) ->
    _ = do_save(State),
    ok.

%%====================================================================
%% Internal functions
%%====================================================================

%% A call to the server that never exits the caller.
call(Request) ->
    try
        gen_server:call(?MODULE, Request, infinity)
    catch
        exit:{noproc, _} -> {error, not_started};
        exit:{Reason, {gen_server, call, _}} -> {error, {server_down, Reason}}
    end.

episodes() ->
    maps:get(episodes, erlmcp_flow_registry:router_stats()).

do_save(#state{path = Path} = State) ->
    Episodes = episodes(),
    case erlmcp_flow_nif:q_save(erlmcp_flow_registry:router(), Path) of
        {ok, _Bytes} = Ok ->
            {Ok, State#state{saved_at = Episodes}};
        {error, Reason} = E ->
            logger:warning("erlmcp_flow: saving the Q-table to ~ts failed: ~p", [Path, Reason]),
            {E, State}
    end.

%% Loads the model if there is one. A bad file is moved aside so that it is
%% never overwritten; if it cannot be moved, saving is switched off.
load_at_start(undefined) ->
    undefined;
load_at_start(Path) ->
    case erlmcp_flow_nif:q_load(erlmcp_flow_registry:router(), Path) of
        {ok, none} ->
            Path;
        {ok, {loaded, Agents, Episodes}} ->
            logger:info("erlmcp_flow: loaded the Q-table of ~b agents (~b episodes) from ~ts",
                        [Agents, Episodes, Path]),
            Path;
        {error, {not_regular, _}} ->
            %% a directory, a device or a FIFO: not a model to move aside
            logger:error("erlmcp_flow: the Q-table path ~ts is not a regular file; starting "
                         "fresh and not saving", [Path]),
            undefined;
        {error, {io, _} = Reason} ->
            %% unreadable (permissions, a vanished disk): nothing is known to be
            %% wrong with the file, so it is neither moved nor overwritten
            logger:error("erlmcp_flow: the Q-table file ~ts cannot be read (~p); starting "
                         "fresh and not saving, so that it is not overwritten", [Path, Reason]),
            undefined;
        {error, Reason} ->
            Aside = <<Path/binary, ".bad-", (integer_to_binary(erlang:system_time(second)))/binary>>,
            case file:rename(Path, Aside) of
                ok ->
                    logger:warning("erlmcp_flow: the Q-table file ~ts is unusable (~p); "
                                   "moved it to ~ts and started with a fresh table",
                                   [Path, Reason, Aside]),
                    Path;
                {error, Why} ->
                    logger:error("erlmcp_flow: the Q-table file ~ts is unusable (~p) and could "
                                 "not be moved aside (~p); starting fresh and not saving, so "
                                 "that it is not overwritten", [Path, Reason, Why]),
                    undefined
            end
    end.

to_path(P) when is_binary(P), P =/= <<>> ->
    {ok, P};
to_path(P) when is_list(P), P =/= [] ->
    try unicode:characters_to_binary(P) of
        B when is_binary(B) -> {ok, B};
        _ -> error
    catch
        error:_ -> error
    end;
to_path(_) ->
    error.
