%% @private
%% @doc A small HTTP/1.1 listener on `gen_tcp', in ranch's shape: this
%% supervisor (`one_for_all') over the listener (`erlmcp_flow_http_listener',
%% which owns the listening socket and counts the connections), a supervisor
%% of connection processes (`erlmcp_flow_http_conn', one per connection) and
%% a supervisor of acceptors (`erlmcp_flow_http_acceptor').
%%
%% Every limit comes from the caller's options (the `metrics' section for
%% `/metrics'): `max_connections', `request_timeout_ms' (a request's line
%% and headers must arrive within it) and `idle_timeout_ms' (a kept-alive
%% connection may wait this long for its next request). At the connection
%% limit a new connection takes the place of the oldest one still waiting for
%% a request, so idle and slow clients cannot lock the listener out; if every
%% connection is busy with a request, the new one is answered 503.
%%
%% A handler module answers requests: `Handler:handle(Method, Path, Headers,
%% Body)' returns `{Status, ContentType, Body}', or `{Status, ContentType,
%% Body, [{HeaderName, Value}]}' with more response headers.
-module(erlmcp_flow_http).
-behaviour(supervisor).

%% API
-export([start_link/1]).
-export([port/1]).
-export([conn_module/1]).

%% supervisor callbacks
-export([init/1]).

-export_type([opts/0, limits/0]).

%% `max_body_bytes' defaults to 1 MiB.
-type limits() :: #{max_connections := pos_integer(),
                    request_timeout_ms := pos_integer(),
                    idle_timeout_ms := pos_integer(),
                    max_body_bytes => pos_integer()}.
%% `tag' names the listener in the reason it fails to start with:
%% `{Tag, Ip, Port, Reason}', for example `{metrics_http, {127,0,0,1}, 9464,
%% eaddrinuse}'.
-type opts() :: #{name := atom(),
                  tag := atom(),
                  ip := inet:ip_address() | any | loopback,
                  port := inet:port_number(),
                  handler := module(),
                  limits := limits(),
                  conn => module()}.

%% Acceptors waiting in accept/1 at once.
-define(ACCEPTORS, 4).

%% @doc Starts the listener `Name' (the name of its listener process).
-spec start_link(opts()) -> {ok, pid()} | {error, term()}.
start_link(#{name := Name} = Opts) ->
    supervisor:start_link({local, sup_name(Name)}, ?MODULE, {top, Opts}).

%% @doc The port the listener `Name' is bound to; `undefined' if it is not running.
%% @doc The module of the listener's connections: `erlmcp_flow_http_conn'
%% unless `conn' names another (with the same `start_link/3', `serve/2' and
%% `close/1', entering and leaving through `erlmcp_flow_http_listener').
-spec conn_module(opts()) -> module().
conn_module(Opts) ->
    maps:get(conn, Opts, erlmcp_flow_http_conn).

-spec port(atom()) -> inet:port_number() | undefined.
port(Name) ->
    erlmcp_flow_http_listener:port(Name).

%% @private
-spec init({top, opts()} | {conns, opts()} | {acceptors, opts()}) ->
          {ok, {supervisor:sup_flags(), [supervisor:child_spec()]}}.
init({top, Opts}) ->
    Flags = #{strategy => one_for_all, intensity => 5, period => 10},
    Children = [#{id => listener,
                  start => {erlmcp_flow_http_listener, start_link, [Opts]}},
                #{id => conns,
                  start => {supervisor, start_link, [?MODULE, {conns, Opts}]},
                  type => supervisor},
                #{id => acceptors,
                  start => {supervisor, start_link, [?MODULE, {acceptors, Opts}]},
                  type => supervisor}],
    {ok, {Flags, Children}};
init({conns, Opts}) ->
    Flags = #{strategy => simple_one_for_one, intensity => 0},
    Conn = #{id => conn,
             start => {conn_module(Opts), start_link, []},
             restart => temporary,
             shutdown => brutal_kill},
    {ok, {Flags, [Conn]}};
init({acceptors, #{name := Name}}) ->
    Flags = #{strategy => one_for_one, intensity => 10, period => 10},
    Acceptors = [#{id => {acceptor, I},
                   start => {erlmcp_flow_http_acceptor, start_link, [Name, self_sup(Name)]}}
                 || I <- lists:seq(1, ?ACCEPTORS)],
    {ok, {Flags, Acceptors}}.

sup_name(Name) ->
    list_to_atom(atom_to_list(Name) ++ "_sup").

%% The connections' supervisor is found through the top supervisor.
self_sup(Name) ->
    sup_name(Name).
