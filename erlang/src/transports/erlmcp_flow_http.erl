%% @private
%% @doc An HTTP/1.1 listener: an `erlmcp_flow_listener' whose protocol is
%% `erlmcp_flow_http_conn' (one process per connection, keep-alive), with a
%% handler module answering the requests.
%%
%% Every limit comes from the caller's options (the `metrics' section for
%% `/metrics'): `max_connections', `request_timeout_ms' (a request's line
%% and headers must arrive within it) and `idle_timeout_ms' (a kept-alive
%% connection may wait this long for its next request), `max_body_bytes'
%% (1 MiB by default). At the connection limit a new connection takes the
%% place of the oldest one still waiting for a request, so idle and slow
%% clients cannot lock the listener out; if every connection is busy with a
%% request, the new one is answered 503.
%%
%% A handler module answers requests: `Handler:handle(Method, Path, Headers,
%% Body[, Ctx])' returns `{Status, ContentType, Body}', or `{Status,
%% ContentType, Body, [{HeaderName, Value}]}' with more response headers (see
%% `erlmcp_flow_http_conn'). Requests are framed by
%% `erlmcp_flow_http_parser' (RFC 9112). With `tls' (ssl's server options)
%% the listener speaks HTTPS; `max_waiting', `max_waiting_per_client' and
%% `rate_limit' are the budgets of `erlmcp_flow_listener_server'.
-module(erlmcp_flow_http).

%% API
-export([start_link/1]).
-export([port/1]).

-export_type([opts/0, limits/0]).

%% `max_body_bytes' defaults to 1 MiB.
-type limits() :: #{max_connections := pos_integer(),
                    request_timeout_ms := pos_integer(),
                    idle_timeout_ms := pos_integer(),
                    max_body_bytes => pos_integer(),
                    max_waiting => pos_integer(),
                    max_waiting_per_client => pos_integer(),
                    rate_limit => pos_integer() | infinity}.
%% `tag' names the listener in the reason it fails to start with:
%% `{Tag, Ip, Port, Reason}', for example `{metrics_http, {127,0,0,1}, 9464,
%% eaddrinuse}'.
-type opts() :: #{name := atom(),
                  tag := atom(),
                  ip := inet:ip_address() | any | loopback,
                  port := inet:port_number(),
                  handler := module(),
                  limits := limits(),
                  tls => erlmcp_flow_socket:tls()}.

%% @doc Starts the HTTP listener `Name'.
-spec start_link(opts()) -> {ok, pid()} | {error, term()}.
start_link(#{name := Name, tag := Tag, ip := Ip, port := Port, handler := Handler,
             limits := #{max_connections := Max} = Limits} = Opts) ->
    Listener = maps:with([tls], Opts),
    Budgets = maps:with([max_waiting, max_waiting_per_client, rate_limit], Limits),
    erlmcp_flow_listener:start_link(maps:merge(Budgets, Listener#{name => Name, tag => Tag, ip => Ip,
                                                                  port => Port,
                                                                  max_connections => Max,
                                                                  protocol => erlmcp_flow_http_conn,
                                                                  protocol_opts => {Handler, Limits}})).

%% @doc The port the listener `Name' is bound to; `undefined' if it is not running.
-spec port(atom()) -> inet:port_number() | undefined.
port(Name) ->
    erlmcp_flow_listener:port(Name).
