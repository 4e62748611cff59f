%% @doc The bulkhead queue: callers whose every capable agent is at its
%% concurrency limit (`circuit_breaker.max_concurrent') wait here, first come
%% first served, until a permit frees or the routing timeout passes.
%%
%% The permits themselves are counters in the Rust core, taken and released
%% by the routing decision and its completion; this server only holds the
%% waiting line, at most `circuit_breaker.max_waiting' callers. A completion
%% tells it that a permit freed only while someone waits (a shared counter
%% says so without a message), and it wakes the first waiter whose
%% capabilities an agent can now serve. It also looks again every 50 ms while
%% anyone waits, for permits freed by callers that died.
-module(erlmcp_flow_bulkhead).
-behaviour(gen_server).

%% API
-export([start_link/0]).
-export([wait/4]).
-export([released/0]).
-export([waiting/0]).

%% gen_server callbacks
-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).
-export([terminate/2]).

-define(WAITERS_KEY, {?MODULE, waiters}).
-define(RECHECK_MS, 50).

-record(waiter, {ref :: reference(), pid :: pid(), caps :: [binary()],
                 %% the agents its decision passes by, and of which kind
                 exclude = [] :: [binary()], kind = any :: term(),
                 mref :: reference()}).
-record(state, {queue = queue:new() :: queue:queue(#waiter{}),
                max :: non_neg_integer(),
                timer = undefined :: undefined | reference()}).

%%====================================================================
%% API
%%====================================================================

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Waits, in the calling process, until a decision for `Caps' that
%% passes the agents `Exclude' by and is of `Kind'
%% (`erlmcp_flow_nif:decide/8''s) may find room, or `Deadline'
%% (`erlang:monotonic_time(millisecond)') passes. Room on an agent the
%% decision passes by is no reason to wake it: it would decide, find none,
%% and queue again at once.
-spec wait([binary()], [binary()], term(), integer()) -> ready | timeout | full.
wait(Caps, Exclude, Kind, Deadline) ->
    case gen_server:call(?MODULE, {enqueue, self(), {Caps, Exclude, Kind}}) of
        {ok, Ref} ->
            Remaining = max(0, Deadline - erlang:monotonic_time(millisecond)),
            receive
                {?MODULE, Ref, ready} -> ready
            after Remaining ->
                gen_server:cast(?MODULE, {dequeue, Ref}),
                %% woken just as the time ran out: the permit is for us
                receive {?MODULE, Ref, ready} -> ready after 0 -> timeout end
            end;
        full ->
            full
    end.

%% @doc Tells the queue a permit freed, if anyone waits (one counter read
%% when nobody does).
-spec released() -> ok.
released() ->
    case persistent_term:get(?WAITERS_KEY, undefined) of
        undefined ->
            ok;
        Counter ->
            case atomics:get(Counter, 1) of
                0 -> ok;
                _ -> gen_server:cast(?MODULE, released)
            end
    end.

%% @doc How many callers wait.
-spec waiting() -> non_neg_integer().
waiting() ->
    case persistent_term:get(?WAITERS_KEY, undefined) of
        undefined -> 0;
        Counter -> atomics:get(Counter, 1)
    end.

%%====================================================================
%% gen_server callbacks
%%====================================================================

%% @private
-spec init([]) -> {ok, #state{}}.
init([]) ->
    %% terminate/2 runs at shutdown: nothing of it stays in persistent_term
    process_flag(trap_exit, true),
    persistent_term:put(?WAITERS_KEY, atomics:new(1, [{signed, false}])),
    {ok, #state{max = erlmcp_flow_config:get(circuit_breaker, max_waiting)}}.

%% @private
-spec terminate(term(), #state{}) -> ok.
terminate(_Reason, _State) ->
    _ = persistent_term:erase(?WAITERS_KEY),
    ok.

%% @private
-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call({enqueue, Pid, {Caps, Exclude, Kind}}, _From, #state{queue = Q, max = Max} = State) ->
    case queue:len(Q) >= Max of
        true ->
            {reply, full, State};
        false ->
            Ref = make_ref(),
            W = #waiter{ref = Ref, pid = Pid, caps = Caps, exclude = Exclude, kind = Kind,
                        mref = erlang:monitor(process, Pid)},
            State1 = counted(State#state{queue = queue:in(W, Q)}),
            %% a permit may have freed between the caller's refusal and now
            {reply, {ok, Ref}, wake(arm(State1))}
    end;
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(released, State) ->
    {noreply, wake(State)};
handle_cast({dequeue, Ref}, State) ->
    {noreply, drop(fun(#waiter{ref = R}) -> R =:= Ref end, State)};
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info(recheck, State) ->
    {noreply, arm(wake(State#state{timer = undefined}))};
handle_info({'DOWN', MRef, process, _, _}, State) ->
    {noreply, drop(fun(#waiter{mref = M}) -> M =:= MRef end, State)};
handle_info(_Info, State) ->
    {noreply, State}.

%%====================================================================
%% Internal functions
%%====================================================================

%% Wakes the first waiter, in arrival order, whose capabilities some agent
%% can serve now; the others keep their places.
wake(#state{queue = Q} = State) ->
    Router = erlmcp_flow_registry:router(),
    case take_first(fun(#waiter{caps = Caps, exclude = Exclude, kind = Kind}) ->
                            erlmcp_flow_nif:has_capacity(Router, Caps, Exclude, Kind) =:= true
                    end,
                    queue:to_list(Q)) of
        {#waiter{ref = Ref, pid = Pid, mref = MRef}, Rest} ->
            erlang:demonitor(MRef, [flush]),
            Pid ! {?MODULE, Ref, ready},
            counted(State#state{queue = queue:from_list(Rest)});
        none ->
            State
    end.

take_first(Pred, List) ->
    take_first(Pred, List, []).

take_first(_Pred, [], _Seen) ->
    none;
take_first(Pred, [W | Rest], Seen) ->
    case Pred(W) of
        true -> {W, lists:reverse(Seen, Rest)};
        false -> take_first(Pred, Rest, [W | Seen])
    end.

drop(Pred, #state{queue = Q} = State) ->
    {Gone, Kept} = lists:partition(Pred, queue:to_list(Q)),
    [erlang:demonitor(M, [flush]) || #waiter{mref = M} <- Gone],
    counted(State#state{queue = queue:from_list(Kept)}).

counted(#state{queue = Q} = State) ->
    atomics:put(persistent_term:get(?WAITERS_KEY), 1, queue:len(Q)),
    State.

%% Keeps a recheck timer running while anyone waits.
arm(#state{timer = undefined, queue = Q} = State) ->
    case queue:is_empty(Q) of
        true -> State;
        false -> State#state{timer = erlang:send_after(?RECHECK_MS, self(), recheck)}
    end;
arm(State) ->
    State.
