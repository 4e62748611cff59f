%% @doc `GET /metrics': the Prometheus exposition (`erlmcp_flow_prometheus')
%% on a small HTTP listener of OTP's inets.
%%
%% Off by default. With `metrics => #{http => true}' the listener binds to
%% `metrics.ip' (default `loopback'; `any', or an address tuple) and
%% `metrics.port' (default 9464; 0 picks a free port, see `port/0'). Any
%% other path is answered 404 and any other method 405.
%%
%% This process owns the inets httpd instance: it starts it, stops it when
%% it stops, and stops (to be restarted by its supervisor) if it dies.
-module(erlmcp_flow_metrics_http).
-behaviour(gen_server).

-include_lib("inets/include/httpd.hrl").

%% API
-export([start_link/0]).
-export([port/0]).

%% inets httpd callback
-export([do/1]).

%% gen_server callbacks
-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).
-export([terminate/2]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc The port the listener is bound to; `undefined' when it is off.
-spec port() -> inet:port_number() | undefined.
port() ->
    case whereis(?MODULE) of
        undefined -> undefined;
        Pid -> gen_server:call(Pid, port)
    end.

%% @private The httpd callback: answers one request.
-spec do(#mod{}) -> {proceed, list()}.
do(#mod{method = "GET", request_uri = Uri}) ->
    case uri_string:parse(Uri) of
        #{path := "/metrics"} ->
            Body = iolist_to_binary(erlmcp_flow_prometheus:render()),
            respond(200, erlmcp_flow_prometheus:content_type(), Body);
        _ ->
            respond(404, "text/plain", <<"not found: GET /metrics\n">>)
    end;
do(#mod{}) ->
    respond(405, "text/plain", <<"method not allowed: GET /metrics\n">>).

respond(Code, Type, Body) ->
    {proceed, [{response, {response, [{code, Code}, {content_type, Type},
                                      {content_length, integer_to_list(byte_size(Body))}],
                           Body}}]}.

%%====================================================================
%% gen_server callbacks
%%====================================================================

%% @private
-spec init([]) -> {ok, {pid(), inet:port_number()}} | {stop, term()}.
init([]) ->
    process_flag(trap_exit, true),
    #{ip := Ip, port := Port} = erlmcp_flow_config:get(metrics),
    %% httpd wants existing directories; it serves no file from them
    Root = code:lib_dir(erlmcp_flow),
    Config = [{port, Port}, {bind_address, address(Ip)}, {ipfamily, family(Ip)},
              {server_name, "erlmcp_flow"}, {server_root, Root}, {document_root, Root},
              {modules, [?MODULE]}, {keep_alive, true}, {max_clients, 16}],
    case inets:start(httpd, Config) of
        {ok, Httpd} ->
            erlang:monitor(process, Httpd),
            [{port, Bound}] = httpd:info(Httpd, [port]),
            {ok, {Httpd, Bound}};
        {error, Reason} ->
            {stop, {metrics_http, Ip, Port, Reason}}
    end.

%% @private
-spec handle_call(term(), gen_server:from(), {pid(), inet:port_number()}) ->
          {reply, term(), {pid(), inet:port_number()}}.
handle_call(port, _From, {_, Port} = State) ->
    {reply, Port, State};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), State) -> {noreply, State}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), {pid(), inet:port_number()}) ->
          {noreply, {pid(), inet:port_number()}} | {stop, term(), {pid(), inet:port_number()}}.
handle_info({'DOWN', _, process, Httpd, Reason}, {Httpd, _} = State) ->
    {stop, {httpd_down, Reason}, State};
handle_info(_Info, State) ->
    {noreply, State}.

%% @private
-spec terminate(term(), {pid(), inet:port_number()}) -> ok.
terminate(_Reason, {Httpd, _}) ->
    _ = inets:stop(httpd, Httpd),
    ok.

%%====================================================================
%% Internal functions
%%====================================================================

address(loopback) -> {127, 0, 0, 1};
address(any) -> any;
address(Ip) -> Ip.

family(Ip) when tuple_size(Ip) =:= 8 -> inet6;
family(_) -> inet.
