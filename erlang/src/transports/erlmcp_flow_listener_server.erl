%% @private
%% @doc The listening socket of an `erlmcp_flow_listener', and the count of
%% its connections.
%%
%% A connection enters when its process gets its socket. Below
%% `max_connections' it is let in. At the limit it takes the place of the
%% oldest connection still waiting for a request (kept alive between
%% requests, or sending one too slowly), which is told to close; when every
%% connection is busy with a request it is turned away (503). So no number of
%% idle or slow clients can keep a quick client out.
-module(erlmcp_flow_listener_server).
-behaviour(gen_server).

%% API
-export([start_link/1]).
-export([port/1]).
-export([socket/1]).
-export([enter/1]).
-export([busy/1]).
-export([waiting/1]).
-export([connections/1]).
-export([probe/1]).

%% gen_server callbacks
-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).

%% Socket options, in one place.
-define(LISTEN_OPTS, [binary, {active, false}, {reuseaddr, true}, {backlog, 1024},
                      {nodelay, true}]).

-record(conn, {phase :: waiting | busy, since :: integer(), mref :: reference()}).
-record(state, {socket :: gen_tcp:socket(),
                port :: inet:port_number(),
                opts :: erlmcp_flow_listener:opts(),
                conns = #{} :: #{pid() => #conn{}}}).

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
-spec socket(atom()) -> {gen_tcp:socket(), erlmcp_flow_listener:opts()}.
socket(Name) ->
    gen_server:call(Name, socket).

%% @doc Called by a connection's process when it has its socket: `ok' to
%% serve it, `full' to turn it away.
-spec enter(atom()) -> ok | full.
enter(Name) ->
    gen_server:call(Name, {enter, self()}).

%% @doc The calling connection has a whole request and is answering it.
-spec busy(atom()) -> ok.
busy(Name) ->
    gen_server:cast(Name, {phase, self(), busy}).

%% @doc The calling connection waits for its next request.
-spec waiting(atom()) -> ok.
waiting(Name) ->
    gen_server:cast(Name, {phase, self(), waiting}).

%% @doc Whether the listener of `Opts' could bind its address now: `ok', or
%% the reason it would stop with, `{Tag, Ip, Port, Why}' (the socket is
%% closed again at once).
-spec probe(#{ip := term(), port := inet:port_number(), tag := atom(), atom() => term()}) ->
          ok | {error, {atom(), inet:ip_address(), inet:port_number(), term()}}.
probe(#{ip := Ip, port := Port, tag := Tag}) ->
    case gen_tcp:listen(Port, [{ip, address(Ip)}, family(Ip) | ?LISTEN_OPTS]) of
        {ok, Socket} -> gen_tcp:close(Socket);
        {error, Reason} -> {error, {Tag, address(Ip), Port, Reason}}
    end.

%% @doc Connections open now.
-spec connections(atom()) -> non_neg_integer().
connections(Name) ->
    gen_server:call(Name, connections).

%%====================================================================
%% gen_server callbacks
%%====================================================================

%% @private
-spec init(erlmcp_flow_listener:opts()) -> {ok, #state{}} | {stop, term()}.
init(#{ip := Ip, port := Port, tag := Tag} = Opts) ->
    case gen_tcp:listen(Port, [{ip, address(Ip)}, family(Ip) | ?LISTEN_OPTS]) of
        {ok, Socket} ->
            {ok, Bound} = inet:port(Socket),
            {ok, #state{socket = Socket, port = Bound, opts = Opts}};
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
handle_call({enter, Pid}, _From, #state{conns = Conns, opts = #{max_connections := Max}} = State) ->
    case map_size(Conns) < Max of
        true ->
            {reply, ok, admit(Pid, State)};
        false ->
            case oldest_waiting(Conns) of
                none ->
                    {reply, full, State};
                Old ->
                    {reply, ok, admit(Pid, evict(Old, State))}
            end
    end;
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast({phase, Pid, Phase}, #state{conns = Conns} = State) ->
    case Conns of
        #{Pid := C} -> {noreply, State#state{conns = Conns#{Pid := C#conn{phase = Phase}}}};
        #{} -> {noreply, State}
    end;
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info({'DOWN', _, process, Pid, _}, #state{conns = Conns} = State) ->
    {noreply, State#state{conns = maps:remove(Pid, Conns)}};
handle_info(_Info, State) ->
    {noreply, State}.

%%====================================================================
%% Internal functions
%%====================================================================

admit(Pid, #state{conns = Conns} = State) ->
    C = #conn{phase = waiting, since = erlang:monotonic_time(),
              mref = erlang:monitor(process, Pid)},
    State#state{conns = Conns#{Pid => C}}.

%% The connection told to close is counted out at once, so that the one
%% taking its place is never refused for it. Every protocol closes on this
%% message (the contract of `erlmcp_flow_listener').
evict(Pid, #state{conns = Conns} = State) ->
    #{Pid := #conn{mref = MRef}} = Conns,
    erlang:demonitor(MRef, [flush]),
    Pid ! {erlmcp_flow_listener, close},
    State#state{conns = maps:remove(Pid, Conns)}.

oldest_waiting(Conns) ->
    pid_of(maps:fold(fun(Pid, #conn{phase = waiting, since = T}, none) -> {Pid, T};
                        (Pid, #conn{phase = waiting, since = T}, {_, T0}) when T < T0 -> {Pid, T};
                        (_, _, Acc) -> Acc
                     end, none, Conns)).

pid_of(none) -> none;
pid_of({Pid, _}) -> Pid.

address(loopback) -> {127, 0, 0, 1};
address(any) -> {0, 0, 0, 0};
address(Ip) -> Ip.

family(Ip) when is_tuple(Ip), tuple_size(Ip) =:= 8 -> inet6;
family(_) -> inet.
