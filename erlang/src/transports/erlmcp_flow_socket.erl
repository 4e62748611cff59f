%% @private
%% @doc The listeners' sockets, plain TCP (`gen_tcp') or TLS (OTP's `ssl')
%% behind one set of calls, so that a connection process reads and writes the
%% same way on both. A TLS socket's handshake runs in the connection's own
%% process (`handshake/2'), never in an acceptor, so a client that is slow to
%% shake hands holds up nobody but itself.
-module(erlmcp_flow_socket).

-export([listen/3]).
-export([accept/1]).
-export([handshake/2]).
-export([controlling_process/2]).
-export([setopts/2]).
-export([send/2]).
-export([recv/3]).
-export([close/1]).
-export([shutdown/2]).
-export([peername/1]).
-export([peercert/1]).
-export([port/1]).
-export([tags/1]).

-export_type([socket/0, tls/0]).

-type socket() :: gen_tcp:socket() | ssl:sslsocket().
%% TLS options for ssl:listen/2 (`certfile', `keyfile', `cacertfile',
%% `verify', `fail_if_no_peer_cert', ...), or `undefined' for plain TCP.
-type tls() :: [ssl:tls_server_option()] | undefined.

%% @doc A listening socket on `Port' with the inet options `Opts', plain or TLS.
-spec listen(inet:port_number(), [gen_tcp:listen_option()], tls()) -> {ok, socket()} | {error, term()}.
listen(Port, Opts, undefined) ->
    gen_tcp:listen(Port, Opts);
listen(Port, Opts, Tls) ->
    ssl:listen(Port, Opts ++ Tls).

%% @doc The next connection (for TLS, before its handshake).
-spec accept(socket()) -> {ok, socket()} | {error, term()}.
accept(L) when is_port(L) -> gen_tcp:accept(L);
accept(L) -> ssl:transport_accept(L).

%% @doc The TLS handshake of an accepted socket, within `Timeout' ms; a
%% plain socket as it is.
-spec handshake(socket(), timeout()) -> {ok, socket()} | {error, term()}.
handshake(S, _Timeout) when is_port(S) -> {ok, S};
handshake(S, Timeout) -> ssl:handshake(S, Timeout).

-spec controlling_process(socket(), pid()) -> ok | {error, term()}.
controlling_process(S, Pid) when is_port(S) -> gen_tcp:controlling_process(S, Pid);
controlling_process(S, Pid) -> ssl:controlling_process(S, Pid).

-spec setopts(socket(), list()) -> ok | {error, term()}.
setopts(S, Opts) when is_port(S) -> inet:setopts(S, Opts);
setopts(S, Opts) -> ssl:setopts(S, Opts).

-spec send(socket(), iodata()) -> ok | {error, term()}.
send(S, Data) when is_port(S) -> gen_tcp:send(S, Data);
send(S, Data) -> ssl:send(S, Data).

-spec close(socket()) -> ok.
-spec recv(socket(), non_neg_integer(), timeout()) -> {ok, binary()} | {error, term()}.
recv(S, N, Timeout) when is_port(S) -> gen_tcp:recv(S, N, Timeout);
recv(S, N, Timeout) -> ssl:recv(S, N, Timeout).

close(S) when is_port(S) -> gen_tcp:close(S);
close(S) -> _ = ssl:close(S), ok.

-spec shutdown(socket(), read | write | read_write) -> ok | {error, term()}.
shutdown(S, How) when is_port(S) -> gen_tcp:shutdown(S, How);
shutdown(S, How) -> ssl:shutdown(S, How).

-spec peername(socket()) -> {ok, {inet:ip_address(), inet:port_number()}} | {error, term()}.
peername(S) when is_port(S) -> inet:peername(S);
peername(S) -> ssl:peername(S).

%% @doc The client's certificate (DER), when it sent one over TLS.
-spec peercert(socket()) -> {ok, binary()} | {error, term()}.
peercert(S) when is_port(S) -> {error, no_peercert};
peercert(S) -> ssl:peercert(S).

-spec port(socket()) -> {ok, inet:port_number()} | {error, term()}.
port(S) when is_port(S) -> inet:port(S);
port(S) ->
    case ssl:sockname(S) of
        {ok, {_, Port}} -> {ok, Port};
        {error, _} = E -> E
    end.

%% @doc The tags of the messages an active socket sends: data, closed, error.
-spec tags(socket()) -> {tcp | ssl, tcp_closed | ssl_closed, tcp_error | ssl_error}.
tags(S) when is_port(S) -> {tcp, tcp_closed, tcp_error};
tags(_) -> {ssl, ssl_closed, ssl_error}.
