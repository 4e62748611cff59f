%% @private
%% @doc A TCP or TLS listener, in ranch's shape: this supervisor
%% (`one_for_all') over the process that owns the listening socket and counts
%% the connections (`erlmcp_flow_listener_server'), a supervisor of
%% connection processes (one per connection, of the listener's protocol) and
%% a supervisor of acceptors (`erlmcp_flow_acceptor'). The HTTP listeners
%% (`erlmcp_flow_http') and the JSON-RPC TCP transport
%% (`erlmcp_flow_rpc_tcp') are listeners with a protocol each.
%%
%% A protocol module implements this behaviour: `start_link(Name,
%% ProtocolOpts)' starts a connection process (it must not touch a socket
%% yet), `serve(Pid, Socket)' hands it its socket (after ownership), and the
%% process enters through `erlmcp_flow_listener_server:enter/1'. It must stop
%% when it receives `{erlmcp_flow_listener, close}' (the listener needs its
%% place). The listener never calls a protocol module otherwise: calls go
%% from the protocols down to the listener.
%%
%% At `max_connections' a new connection takes the place of the oldest one
%% still waiting for a request (in the phase `waiting', see
%% `erlmcp_flow_listener_server'); when every connection is busy the new one
%% is turned away by its protocol.
-module(erlmcp_flow_listener).
-behaviour(supervisor).

%% API
-export([start_link/1]).
-export([port/1]).
-export([connections/1]).
-export([probe/1]).

%% supervisor callbacks
-export([init/1]).

-export_type([opts/0]).

-callback start_link(Name :: atom(), ProtocolOpts :: term()) -> {ok, pid()} | {error, term()}.
-callback serve(Conn :: pid(), Socket :: erlmcp_flow_socket:socket()) -> ok.

%% `tag' names the listener in the reason it fails to start with:
%% `{Tag, Ip, Port, Reason}', for example `{metrics_http, {127,0,0,1}, 9464,
%% eaddrinuse}'.
%% `tls' (ssl's server options) makes it a TLS listener. The budgets (see
%% `erlmcp_flow_listener_server'): `max_unauthenticated', `max_waiting',
%% `max_waiting_per_client' (each `max_connections' by default) and
%% `rate_limit' (requests per second per client address; `infinity'),
%% `max_in_flight' and `max_in_flight_bytes' (messages served at once over
%% every connection; `infinity').
-type opts() :: #{name := atom(),
                  tag := atom(),
                  ip := inet:ip_address() | any | loopback,
                  port := inet:port_number(),
                  max_connections := pos_integer(),
                  protocol := module(),
                  protocol_opts := term(),
                  tls => erlmcp_flow_socket:tls(),
                  max_unauthenticated => pos_integer(),
                  max_waiting => pos_integer(),
                  max_waiting_per_client => pos_integer(),
                  rate_limit => pos_integer() | infinity,
                  max_in_flight => pos_integer(),
                  max_in_flight_bytes => pos_integer()}.

%% Acceptors waiting in accept/1 at once.
-define(ACCEPTORS, 4).

%% @doc Starts the listener `Name' (the registered name of its socket's
%% owner; the supervisor is `Name_sup').
-spec start_link(opts()) -> {ok, pid()} | {error, term()}.
start_link(#{name := Name} = Opts) ->
    supervisor:start_link({local, sup_name(Name)}, ?MODULE, {top, Opts}).

%% @doc The port the listener `Name' is bound to; `undefined' if it is not running.
-spec port(atom()) -> inet:port_number() | undefined.
port(Name) ->
    erlmcp_flow_listener_server:port(Name).

%% @doc Connections of the listener `Name' open now.
-spec connections(atom()) -> non_neg_integer().
connections(Name) ->
    erlmcp_flow_listener_server:connections(Name).

%% @doc Whether a listener could bind `ip' and `port' now (`ok'), or the
%% reason it would stop with, `{Tag, Ip, Port, Why}'.
-spec probe(#{ip := term(), port := inet:port_number(), tag := atom(), atom() => term()}) ->
          ok | {error, {atom(), inet:ip_address(), inet:port_number(), term()}}.
probe(Opts) ->
    erlmcp_flow_listener_server:probe(Opts).

%% @private
-spec init({top, opts()} | {conns, opts()} | {acceptors, opts()}) ->
          {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init({top, Opts}) ->
    Flags = #{strategy => one_for_all, intensity => 5, period => 10},
    Children = [#{id => listener,
                  start => {erlmcp_flow_listener_server, start_link, [Opts]}},
                #{id => conns,
                  start => {supervisor, start_link, [?MODULE, {conns, Opts}]},
                  type => supervisor},
                #{id => acceptors,
                  start => {supervisor, start_link, [?MODULE, {acceptors, Opts}]},
                  type => supervisor}],
    {ok, {Flags, Children}};
init({conns, #{name := Name, protocol := Protocol, protocol_opts := ProtocolOpts}}) ->
    Flags = #{strategy => simple_one_for_one, intensity => 0},
    Conn = #{id => conn,
             start => {Protocol, start_link, [Name, ProtocolOpts]},
             restart => temporary,
             shutdown => brutal_kill},
    {ok, {Flags, [Conn]}};
init({acceptors, #{name := Name}}) ->
    Flags = #{strategy => one_for_one, intensity => 10, period => 10},
    Acceptors = [#{id => {acceptor, I},
                   start => {erlmcp_flow_acceptor, start_link, [Name, sup_name(Name)]}}
                 || I <- lists:seq(1, ?ACCEPTORS)],
    {ok, {Flags, Acceptors}}.

sup_name(Name) ->
    list_to_atom(atom_to_list(Name) ++ "_sup").
