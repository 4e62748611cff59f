%% @private
%% @doc The listening socket of an `erlmcp_flow_listener' (plain TCP or
%% TLS), the count of its connections, and the budgets its clients share.
%%
%% A connection enters when its process gets its socket. Below
%% `max_connections' it is let in. At the limit it takes the place of the
%% oldest connection still waiting for a request (kept alive between
%% requests, or sending one too slowly), which is told to close; when every
%% connection is busy with a request it is turned away. So no number of idle
%% or slow clients can keep a quick client out.
%%
%% A connection that must authenticate first (the JSON-RPC TCP transport
%% with a token) enters a pool of its own, `max_unauthenticated', where a
%% newcomer takes the place of the oldest: unauthenticated clients never
%% take the slots of authenticated ones. Once authenticated it moves to the
%% main pool (`authenticated/1').
%%
%% Requests that wait on agents take a permit (`permit/2'): at most
%% `max_waiting' at once on the listener and `max_waiting_per_client' from
%% one client address, so that they cannot hold every connection and starve
%% the listener's other endpoints. Every request counts against a per-client
%% rate, `rate_limit' requests in a one-second window per client address
%% (`allow/2', an ETS counter: no call to this process). Messages served at
%% once over every connection of the listener are bounded too, in number
%% and bytes (`max_in_flight', `max_in_flight_bytes'; `acquire/2' and
%% `release/2', atomics: no call either).
-module(erlmcp_flow_listener_server).
-behaviour(gen_server).

%% API
-export([start_link/1]).
-export([port/1]).
-export([socket/1]).
-export([enter/1]).
-export([enter/3]).
-export([authenticated/1]).
-export([busy/1]).
-export([waiting/1]).
-export([permit/2]).
-export([release/1]).
-export([allow/2]).
-export([acquire/2]).
-export([release/2]).
-export([in_flight/1]).
-export([connections/1]).
-export([probe/1]).

%% gen_server callbacks
-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).

-export_type([ctx/0]).

%% Socket options, in one place.
-define(LISTEN_OPTS, [binary, {active, false}, {reuseaddr, true}, {backlog, 1024},
                      {nodelay, true}]).
%% How often the rate windows past are dropped (ms).
-define(SWEEP_MS, 1000).

%% What a connection is told when it enters: the rate table and its limit,
%% the budget of messages in flight and its limits.
-type ctx() :: #{rate := ets:tid(), rate_limit := pos_integer() | infinity,
                 budget := atomics:atomics_ref(), max_in_flight := pos_integer() | infinity,
                 max_in_flight_bytes := pos_integer() | infinity}.

-record(conn, {phase :: waiting | busy | unauthenticated,
               since :: integer(),
               mref :: reference(),
               ip :: inet:ip_address() | undefined}).
-record(state, {socket :: erlmcp_flow_socket:socket(),
                port :: inet:port_number(),
                opts :: erlmcp_flow_listener:opts(),
                conns = #{} :: #{pid() => #conn{}},
                main = 0 :: non_neg_integer(),
                unauth = 0 :: non_neg_integer(),
                %% requests waiting on agents: by connection, and by client
                permits = #{} :: #{pid() => inet:ip_address() | undefined},
                per_client = #{} :: #{inet:ip_address() | undefined => pos_integer()},
                rate :: ets:tid(),
                %% messages in flight over every connection, and their bytes
                budget :: atomics:atomics_ref()}).

%%====================================================================
%% API
%%====================================================================

-spec start_link(erlmcp_flow_listener:opts()) -> {ok, pid()} | {error, term()}.
start_link(#{name := Name} = Opts) ->
    gen_server:start_link({local, Name}, ?MODULE, Opts, []).

%% @doc The bound port, `undefined' when the listener is not running.
-spec port(atom()) -> inet:port_number() | undefined.
port(Name) ->
    case whereis(Name) of
        undefined -> undefined;
        Pid -> try gen_server:call(Pid, port) catch exit:_ -> undefined end
    end.

%% @doc The listening socket and the options, for the acceptors.
-spec socket(atom()) -> {erlmcp_flow_socket:socket(), erlmcp_flow_listener:opts()}.
socket(Name) ->
    gen_server:call(Name, socket).

%% @doc `enter(Name, undefined, waiting)' answering `ok' or `full'.
-spec enter(atom()) -> ok | full.
enter(Name) ->
    case enter(Name, undefined, waiting) of
        {ok, _} -> ok;
        full -> full
    end.

%% @doc The calling connection process, from client address `Ip', enters
%% in the phase `Phase' (`unauthenticated' puts it in that pool).
-spec enter(atom(), inet:ip_address() | undefined, waiting | busy | unauthenticated) ->
          {ok, ctx()} | full.
enter(Name, Ip, Phase) ->
    gen_server:call(Name, {enter, self(), Ip, Phase}).

%% @doc The calling connection authenticated: it moves to the main pool
%% (busy), or `full' when that pool is busy to the last connection.
-spec authenticated(atom()) -> ok | full.
authenticated(Name) ->
    gen_server:call(Name, {authenticated, self()}).

%% @doc The calling connection is serving a request: not to be evicted.
-spec busy(atom()) -> ok.
busy(Name) ->
    gen_server:cast(Name, {phase, self(), busy}).

%% @doc The calling connection waits for its next request: evictable.
-spec waiting(atom()) -> ok.
waiting(Name) ->
    gen_server:cast(Name, {phase, self(), waiting}).

%% @doc A permit for one request that waits on agents, for the calling
%% connection (one at a time), or `overloaded' past `max_waiting' on the
%% listener or `max_waiting_per_client' from `Ip'.
-spec permit(atom(), inet:ip_address() | undefined) -> ok | overloaded.
permit(Name, Ip) ->
    gen_server:call(Name, {permit, self(), Ip}).

%% @doc The calling connection's permit back.
-spec release(atom()) -> ok.
release(Name) ->
    gen_server:cast(Name, {release, self()}).

%% @doc Whether one more request from `Ip' fits its rate (and counts it).
-spec allow(ctx(), inet:ip_address() | undefined) -> boolean().
allow(#{rate_limit := infinity}, _Ip) ->
    true;
allow(#{rate := Tab, rate_limit := Limit}, Ip) ->
    Key = {Ip, erlang:monotonic_time(second)},
    try ets:update_counter(Tab, Key, 1, {Key, 0}) =< Limit
    catch error:badarg -> true
    end.

%% @doc One more message of `Bytes' in flight (`ok', counted until
%% `release/2'), or `overloaded' past the listener's bounds.
-spec acquire(ctx() | map(), non_neg_integer()) -> ok | overloaded.
acquire(#{budget := Ref, max_in_flight := MaxN, max_in_flight_bytes := MaxB}, Bytes) ->
    %% Compare-and-swap, so that the counters never read past their bounds
    %% (an add that is taken back would show a moment of overshoot).
    case take(Ref, 1, 1, MaxN) of
        ok ->
            case take(Ref, 2, Bytes, MaxB) of
                ok -> ok;
                overloaded -> atomics:sub(Ref, 1, 1), overloaded
            end;
        overloaded ->
            overloaded
    end;
acquire(_, _) ->
    ok.

take(Ref, Ix, Amount, infinity) ->
    atomics:add(Ref, Ix, Amount);
take(Ref, Ix, Amount, Max) ->
    take(Ref, Ix, Amount, Max, atomics:get(Ref, Ix)).

take(_Ref, _Ix, Amount, Max, Old) when Old + Amount > Max ->
    overloaded;
take(Ref, Ix, Amount, Max, Old) ->
    case atomics:compare_exchange(Ref, Ix, Old, Old + Amount) of
        ok -> ok;
        Now -> take(Ref, Ix, Amount, Max, Now)
    end.

%% @doc A message of `Bytes' answered.
-spec release(ctx() | map(), non_neg_integer()) -> ok.
release(#{budget := Ref}, Bytes) ->
    atomics:sub(Ref, 1, 1),
    atomics:sub(Ref, 2, Bytes);
release(_, _) ->
    ok.

%% @doc The messages in flight over the listener `Name' and their bytes.
-spec in_flight(atom()) -> #{messages := integer(), bytes := integer()}.
in_flight(Name) ->
    gen_server:call(Name, in_flight).

-spec connections(atom()) -> non_neg_integer().
connections(Name) ->
    gen_server:call(Name, connections).

%% @doc Whether `ip' and `port' can be bound now (`ok'), or the reason the
%% listener would stop with.
-spec probe(#{ip := term(), port := inet:port_number(), tag := atom(), atom() => term()}) ->
          ok | {error, {atom(), inet:ip_address(), inet:port_number(), term()}}.
probe(#{ip := Ip, port := Port, tag := Tag}) ->
    case gen_tcp:listen(Port, [{ip, address(Ip)}, family(Ip) | ?LISTEN_OPTS]) of
        {ok, S} -> gen_tcp:close(S), ok;
        {error, Reason} -> {error, {Tag, address(Ip), Port, Reason}}
    end.

%%====================================================================
%% gen_server callbacks
%%====================================================================

%% @private
-spec init(erlmcp_flow_listener:opts()) -> {ok, #state{}} | {stop, term()}.
init(#{ip := Ip, port := Port, tag := Tag} = Opts) ->
    Tls = maps:get(tls, Opts, undefined),
    case erlmcp_flow_socket:listen(Port, [{ip, address(Ip)}, family(Ip) | ?LISTEN_OPTS], Tls) of
        {ok, Socket} ->
            {ok, Bound} = erlmcp_flow_socket:port(Socket),
            Rate = ets:new(rate, [public, set, {write_concurrency, true}]),
            erlang:send_after(?SWEEP_MS, self(), sweep),
            {ok, #state{socket = Socket, port = Bound, opts = Opts, rate = Rate,
                        budget = atomics:new(2, [{signed, true}])}};
        {error, Reason} ->
            {stop, {Tag, address(Ip), Port, Reason}}
    end.

%% @private
-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call(port, _From, #state{port = Port} = State) ->
    {reply, Port, State};
handle_call(socket, _From, #state{socket = Socket, opts = Opts} = State) ->
    {reply, {Socket, Opts}, State};
handle_call(connections, _From, #state{conns = Conns} = State) ->
    {reply, map_size(Conns), State};
handle_call(in_flight, _From, #state{budget = Ref} = State) ->
    {reply, #{messages => atomics:get(Ref, 1), bytes => atomics:get(Ref, 2)}, State};
handle_call({enter, Pid, Ip, unauthenticated}, _From, #state{unauth = N} = State) ->
    Max = opt(max_unauthenticated, State),
    State1 = case N < Max of
                 true -> State;
                 false -> evict(oldest(unauthenticated, State#state.conns), State)
             end,
    {reply, {ok, ctx(State)}, admit(Pid, Ip, unauthenticated, State1)};
handle_call({enter, Pid, Ip, Phase}, _From, State) ->
    case room(State) of
        {ok, State1} -> {reply, {ok, ctx(State)}, admit(Pid, Ip, Phase, State1)};
        full -> {reply, full, State}
    end;
handle_call({authenticated, Pid}, _From, #state{conns = Conns} = State) ->
    case Conns of
        #{Pid := #conn{phase = unauthenticated} = C} ->
            %% its own place is not in the main pool yet: the room looked for
            %% is another's
            case room(State) of
                {ok, #state{conns = Conns1} = State1} ->
                    {reply, ok, State1#state{conns = Conns1#{Pid := C#conn{phase = busy}},
                                             main = State1#state.main + 1,
                                             unauth = State1#state.unauth - 1}};
                full ->
                    {reply, full, State}
            end;
        #{} ->
            {reply, ok, State}
    end;
handle_call({permit, Pid, Ip}, _From, #state{permits = Permits, per_client = PerClient} = State) ->
    Held = maps:get(Ip, PerClient, 0),
    MaxWaiting = opt(max_waiting, State),
    MaxPerClient = opt(max_waiting_per_client, State),
    if
        is_map_key(Pid, Permits) ->
            {reply, ok, State};
        map_size(Permits) >= MaxWaiting ->
            {reply, overloaded, State};
        Held >= MaxPerClient ->
            {reply, overloaded, State};
        true ->
            {reply, ok, State#state{permits = Permits#{Pid => Ip},
                                    per_client = PerClient#{Ip => Held + 1}}}
    end;
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast({phase, Pid, Phase}, #state{conns = Conns} = State) ->
    case Conns of
        #{Pid := #conn{phase = unauthenticated}} -> {noreply, State};
        #{Pid := C} -> {noreply, State#state{conns = Conns#{Pid := C#conn{phase = Phase}}}};
        #{} -> {noreply, State}
    end;
handle_cast({release, Pid}, State) ->
    {noreply, drop_permit(Pid, State)};
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info({'DOWN', _, process, Pid, _}, State) ->
    {noreply, drop_permit(Pid, forget(Pid, State))};
handle_info(sweep, #state{rate = Rate} = State) ->
    %% the windows before the current one are done with
    Now = erlang:monotonic_time(second),
    _ = ets:select_delete(Rate, [{{{'_', '$1'}, '_'}, [{'<', '$1', Now}], [true]}]),
    erlang:send_after(?SWEEP_MS, self(), sweep),
    {noreply, State};
handle_info(_Info, State) ->
    {noreply, State}.

%%====================================================================
%% Internal functions
%%====================================================================

ctx(#state{rate = Rate, budget = Budget} = State) ->
    #{rate => Rate, rate_limit => opt(rate_limit, State), budget => Budget,
      max_in_flight => opt(max_in_flight, State),
      max_in_flight_bytes => opt(max_in_flight_bytes, State)}.

opt(Key, #state{opts = Opts}) ->
    maps:get(Key, Opts, default(Key, Opts)).

default(max_unauthenticated, #{max_connections := Max}) -> Max;
default(max_waiting, #{max_connections := Max}) -> Max;
default(max_waiting_per_client, #{max_connections := Max}) -> Max;
default(rate_limit, _) -> infinity;
default(max_in_flight, _) -> infinity;
default(max_in_flight_bytes, _) -> infinity.

%% Room in the main pool: below the limit, or the place of its oldest
%% waiting connection.
room(#state{main = N, conns = Conns, opts = #{max_connections := Max}} = State) ->
    case N < Max of
        true ->
            {ok, State};
        false ->
            case oldest(waiting, Conns) of
                none -> full;
                Old -> {ok, evict(Old, State)}
            end
    end.

admit(Pid, Ip, Phase, #state{conns = Conns} = State) ->
    C = #conn{phase = Phase, since = erlang:monotonic_time(), ip = Ip,
              mref = erlang:monitor(process, Pid)},
    count(Phase, +1, State#state{conns = Conns#{Pid => C}}).

count(unauthenticated, D, #state{unauth = N} = State) -> State#state{unauth = N + D};
count(_, D, #state{main = N} = State) -> State#state{main = N + D}.

forget(Pid, #state{conns = Conns} = State) ->
    case maps:take(Pid, Conns) of
        {#conn{phase = Phase}, Conns1} -> count(Phase, -1, State#state{conns = Conns1});
        error -> State
    end.

drop_permit(Pid, #state{permits = Permits, per_client = PerClient} = State) ->
    case maps:take(Pid, Permits) of
        {Ip, Permits1} ->
            PerClient1 = case maps:get(Ip, PerClient) of
                             1 -> maps:remove(Ip, PerClient);
                             N -> PerClient#{Ip := N - 1}
                         end,
            State#state{permits = Permits1, per_client = PerClient1};
        error ->
            State
    end.

%% The connection told to close is counted out at once, so that the one
%% taking its place is never refused for it. Every protocol closes on this
%% message (the contract of `erlmcp_flow_listener').
evict(none, State) ->
    State;
evict(Pid, #state{conns = Conns} = State) ->
    #{Pid := #conn{mref = MRef}} = Conns,
    erlang:demonitor(MRef, [flush]),
    Pid ! {erlmcp_flow_listener, close},
    drop_permit(Pid, forget(Pid, State)).

oldest(Phase, Conns) ->
    pid_of(maps:fold(fun(Pid, #conn{phase = P, since = T}, none) when P =:= Phase -> {Pid, T};
                        (Pid, #conn{phase = P, since = T}, {_, T0}) when P =:= Phase, T < T0 -> {Pid, T};
                        (_, _, Acc) -> Acc
                     end, none, Conns)).

pid_of(none) -> none;
pid_of({Pid, _}) -> Pid.

address(loopback) -> {127, 0, 0, 1};
address(any) -> {0, 0, 0, 0};
address(Ip) -> Ip.

family(Ip) when is_tuple(Ip), tuple_size(Ip) =:= 8 -> inet6;
family(_) -> inet.
