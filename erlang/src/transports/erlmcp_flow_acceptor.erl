%% @private
%% @doc One acceptor of an `erlmcp_flow_listener': it waits in
%% `gen_tcp:accept/1' on the listener's socket, hands each new socket to a
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
    case gen_tcp:accept(Socket) of
        {ok, Client} ->
            case supervisor:start_child(ConnSup, []) of
                {ok, Conn} ->
                    case gen_tcp:controlling_process(Client, Conn) of
                        ok -> Protocol:serve(Conn, Client);
                        {error, _} -> gen_tcp:close(Client), Conn ! {erlmcp_flow_listener, close}
                    end;
                _ ->
                    gen_tcp:close(Client)
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
