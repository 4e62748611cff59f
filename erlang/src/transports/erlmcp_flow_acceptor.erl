%% @private
%% @doc One acceptor of an `erlmcp_flow_listener': it waits for the next
%% connection on the listener's socket (TCP, or TLS before its handshake,
%% which the connection's process does), hands each new socket to a
%% connection process of the listener's protocol, started under the
%% listener's connection supervisor, and waits again.
-module(erlmcp_flow_acceptor).

%% API
-export([start_link/2]).

%% proc_lib entry
-export([init/2]).

-spec start_link(atom(), atom()) -> {ok, pid()}.
start_link(Name, TopSup) ->
    {ok, proc_lib:spawn_link(?MODULE, init, [Name, TopSup])}.

%% @private
-spec init(atom(), atom()) -> no_return().
init(Name, TopSup) ->
    {Socket, Opts} = erlmcp_flow_listener_server:socket(Name),
    [ConnSup] = [Pid || {conns, Pid, supervisor, _} <- supervisor:which_children(TopSup)],
    loop(Socket, ConnSup, Opts).

loop(Socket, ConnSup, #{protocol := Protocol} = Opts) ->
    case erlmcp_flow_socket:accept(Socket) of
        {ok, Client} ->
            case supervisor:start_child(ConnSup, []) of
                {ok, Conn} ->
                    case erlmcp_flow_socket:controlling_process(Client, Conn) of
                        ok -> Protocol:serve(Conn, Client);
                        {error, _} -> erlmcp_flow_socket:close(Client),
                                      Conn ! {erlmcp_flow_listener, close}
                    end;
                _ ->
                    erlmcp_flow_socket:close(Client)
            end,
            loop(Socket, ConnSup, Opts);
        {error, closed} ->
            exit(normal);
        {error, Reason} when Reason =:= emfile; Reason =:= enfile ->
            %% out of file descriptors: wait a little instead of spinning
            receive after 100 -> ok end,
            loop(Socket, ConnSup, Opts);
        {error, _} ->
            loop(Socket, ConnSup, Opts)
    end.
