%% @doc MCP servers as routed agents, and the tools the MCP front lists.
%%
%% `register_server(Id, #{command := [Exe | Args]} | #{url := Url}, Opts)'
%% starts the server as a supervised port (or speaks Streamable HTTP to
%% `Url'), initializes it (protocol 2025-11-25), lists its tools and
%% registers one agent `Id' whose capabilities are `tool:NAME' for each
%% tool, `mcp_server', and `maps:get(capabilities, Opts, [])'. A task `#{tool := Name,
%% arguments := Args}' becomes `tools/call'; its result answers the task
%% (`{ok, CallToolResult}'; a result with `isError' answers `{error,
%% {tool_error, CallToolResult}}', a JSON-RPC error `{error, {mcp_error,
%% Code, Message}}'). Several instances of one server are several agents,
%% so the router spreads and learns across them. A server that exits is
%% started again with backoff (100 ms doubling to 5 s) and its agent comes
%% back; its tasks in flight fail (retried elsewhere when the tool is
%% idempotent); `notifications/tools/list_changed' refreshes its
%% capabilities; a task the router stops waiting for is cancelled with
%% `notifications/cancelled'.
%%
%% The configuration section `mcp' starts servers at boot:
%% `#{servers => [#{id => Id, command => [Exe | Args]} | #{id => Id, url =>
%% Url}]}' (each map may also hold `capabilities' and `timeout_ms').
%%
%% A URL may be `https': the server's certificate is verified against the
%% system's CA certificates (or the spec's `tls => #{cacertfile => Path}'),
%% and its name against the URL's host; `tls' may also give `verify =>
%% verify_none' (not advised) and `certfile' with `keyfile' for a client
%% certificate.
-module(erlmcp_flow_mcp).
-behaviour(gen_server).

-export([start_link/0]).
-export([register_server/3]).
-export([unregister_server/1]).
-export([servers/0]).
-export([declare_tool/2]).
-export([await_configured/1]).
-export([set_log_level/1]).

-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).

-define(READY_TIMEOUT, 30000).
-define(SWEEP_MS, 60000).
-define(SESSION_IDLE_MS, 3600000).

-type spec() :: #{command := [string() | binary(), ...]}
              | #{url := string() | binary(),
                  tls => #{cacertfile => file:filename_all(), verify => verify_peer | verify_none,
                           certfile => file:filename_all(), keyfile => file:filename_all()}}.
-export_type([spec/0]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Starts (or connects to) an MCP server and registers it as the agent
%% `Id' once it has listed its tools. `Opts': `capabilities' (more
%% capabilities of the agent), `timeout_ms' (how long to wait for it to be
%% ready, default 30 000).
-spec register_server(binary(), spec(), map()) ->
          ok | {error, already_registered | not_started | {badarg, term()} | term()}.
register_server(Id, Spec, Opts) ->
    case check(Id, Spec, Opts) of
        ok ->
            case supervisor:start_child(erlmcp_flow_mcp_agent_sup, [Id, Spec, Opts]) of
                {ok, Pid} ->
                    Timeout = maps:get(timeout_ms, Opts, ?READY_TIMEOUT),
                    case erlmcp_flow_mcp_agent:await_ready(Pid, Timeout) of
                        ok ->
                            ok;
                        {error, _} = E ->
                            _ = supervisor:terminate_child(erlmcp_flow_mcp_agent_sup, Pid),
                            E
                    end;
                {error, Reason} ->
                    {error, Reason}
            end;
        {error, _} = E ->
            E
    end.

check(Id, _Spec, _Opts) when not is_binary(Id); Id =:= <<>> ->
    {error, {badarg, {server_id, Id}}};
check(_Id, _Spec, Opts) when not is_map(Opts) ->
    {error, {badarg, opts}};
check(Id, Spec, Opts) ->
    case {Spec, whereis(erlmcp_flow_mcp_agent_sup)} of
        {_, undefined} ->
            {error, not_started};
        {#{command := [Exe | Args]}, _} when is_list(Args) ->
            case is_text(Exe) andalso lists:all(fun is_text/1, Args) of
                true -> check_opts(Id, Opts);
                false -> {error, {badarg, {command, maps:get(command, Spec)}}}
            end;
        {#{url := Url}, _} ->
            case is_text(Url) andalso uri_string:parse(text(Url)) of
                #{scheme := Scheme, host := [_ | _]} when Scheme =:= "http"; Scheme =:= "https" ->
                    case client_tls(maps:get(tls, Spec, #{})) of
                        true -> check_opts(Id, Opts);
                        false -> {error, {badarg, {tls, maps:get(tls, Spec)}}}
                    end;
                _ -> {error, {badarg, {url, Url}}}
            end;
        _ ->
            {error, {badarg, {spec, Spec}}}
    end.

%% The client side of an https URL: `cacertfile' (default: the system's
%% CA certificates), `verify' (`verify_peer', the default, or
%% `verify_none'), and `certfile' with `keyfile' for a client certificate.
client_tls(Tls) when is_map(Tls) ->
    Path = fun(K) -> case maps:get(K, Tls, undefined) of
                         undefined -> true;
                         P -> is_text(P) andalso P =/= "" andalso P =/= <<>>
                     end
           end,
    maps:keys(maps:without([cacertfile, verify, certfile, keyfile], Tls)) =:= []
        andalso lists:all(Path, [cacertfile, certfile, keyfile])
        andalso lists:member(maps:get(verify, Tls, verify_peer), [verify_peer, verify_none])
        andalso (maps:is_key(certfile, Tls) =:= maps:is_key(keyfile, Tls));
client_tls(_) ->
    false.

check_opts(Id, Opts) ->
    Caps = maps:get(capabilities, Opts, []),
    case erlmcp_flow_registry:is_capability_list(Caps) of
        false ->
            {error, {badarg, {capabilities, Caps}}};
        true ->
            case erlmcp_flow_registry:find_agent(Id) of
                {ok, _} -> {error, already_registered};
                _ -> ok
            end
    end.

is_text(T) when is_binary(T) -> T =/= <<>>;
is_text(T) when is_list(T) -> T =/= [] andalso io_lib:printable_unicode_list(T);
is_text(_) -> false.

text(T) when is_binary(T) -> binary_to_list(T);
text(T) -> T.

%% @doc Stops an MCP server's agent (and the server, when it is a port).
-spec unregister_server(binary()) -> ok | {error, not_found}.
unregister_server(Id) ->
    case [Pid || #{id := I, pid := Pid} <- servers(), I =:= Id] of
        [Pid | _] -> _ = supervisor:terminate_child(erlmcp_flow_mcp_agent_sup, Pid), ok;
        [] -> {error, not_found}
    end.

%% @doc The MCP servers this node runs as agents: `#{id, pid, spec, status
%% (starting | initializing | listing | ready | restarting), tools,
%% restarts, os_pid (of a port's server, else undefined)}'.
-spec servers() -> [map()].
servers() ->
    case whereis(erlmcp_flow_mcp_agent_sup) of
        undefined ->
            [];
        _ ->
            lists:sort([S || {_, Pid, _, _} <- supervisor:which_children(erlmcp_flow_mcp_agent_sup),
                             is_pid(Pid), #{} = S <- [erlmcp_flow_mcp_agent:info(Pid)]])
    end.

%% @doc Waits (at most `Timeout' ms) until every server of the
%% configuration's `mcp.servers' is ready: the stdio MCP front waits so
%% before it reads its host's first message, so that the host's first
%% `tools/list' has their tools.
-spec await_configured(non_neg_integer()) -> ok | {error, timeout}.
await_configured(Timeout) ->
    Ids = [Id || #{id := Id} <- erlmcp_flow_config:get(mcp, servers)],
    Deadline = erlang:monotonic_time(millisecond) + Timeout,
    await_configured(Ids, Deadline).

await_configured(Ids, Deadline) ->
    Ready = [Id || #{id := Id, status := ready} <- servers()],
    case Ids -- Ready of
        [] -> ok;
        _ ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> {error, timeout};
                false -> timer:sleep(50), await_configured(Ids, Deadline)
            end
    end.

%% @doc Asks every MCP server behind that declared the `logging' capability
%% to send log messages at `Level' and above (`logging/setLevel'); the MCP
%% fronts call it with the most verbose level a session asked for.
-spec set_log_level(binary() | undefined) -> ok.
set_log_level(undefined) ->
    ok;
set_log_level(Level) ->
    _ = [Pid ! {set_log_level, Level} || #{pid := Pid} <- agents()],
    ok.

agents() ->
    case whereis(erlmcp_flow_mcp_agent_sup) of
        undefined -> [];
        _ -> [#{pid => Pid} || {_, Pid, _, _} <- supervisor:which_children(erlmcp_flow_mcp_agent_sup),
                               is_pid(Pid)]
    end.

%% @doc Declares the MCP description of the tool `Name' (its
%% `inputSchema', `description', `annotations', ...) for `tools/list'; an
%% agent serves it by holding the capability `tool:NAME'.
-spec declare_tool(binary(), map()) -> ok | {error, not_started | {badarg, name | tool}}.
declare_tool(Name, _Tool) when not is_binary(Name); Name =:= <<>> ->
    {error, {badarg, name}};
declare_tool(_Name, Tool) when not is_map(Tool) ->
    {error, {badarg, tool}};
declare_tool(Name, Tool) ->
    erlmcp_flow_mcp_tools:declare(Name, Tool).

%%====================================================================
%% gen_server callbacks
%%====================================================================

%% @private
-spec init([]) -> {ok, map()}.
init([]) ->
    %% the configured servers' starters are linked to this server
    process_flag(trap_exit, true),
    %% MCP sessions of the HTTP transport (erlmcp_flow_mcp_http): written by
    %% the connections, owned here so they outlive any one of them
    _ = ets:new(erlmcp_flow_mcp_sessions, [named_table, public, set]),
    erlang:send_after(?SWEEP_MS, self(), sweep),
    self() ! boot,
    {ok, #{}}.

%% @private
-spec handle_call(term(), gen_server:from(), map()) -> {reply, term(), map()}.
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private The servers of the configuration, started once the tree is up.
-spec handle_info(term(), map()) -> {noreply, map()}.
handle_info(boot, State) ->
    %% one starter per server, linked to this server: the starters go with
    %% it if it stops, and an exit of theirs is a message here
    [proc_lib:spawn_link(fun() -> boot(S) end) || S <- erlmcp_flow_config:get(mcp, servers)],
    {noreply, State};
handle_info({'EXIT', _Starter, normal}, State) ->
    {noreply, State};
handle_info({'EXIT', _Starter, Reason}, State) ->
    logger:error("erlmcp_flow: an MCP server's starter crashed: ~0p", [Reason]),
    {noreply, State};
handle_info(sweep, State) ->
    %% sessions idle for an hour end
    Old = erlang:monotonic_time(millisecond) - ?SESSION_IDLE_MS,
    ets:select_delete(erlmcp_flow_mcp_sessions,
                      [{{'$1', '_', '$2', '_', '_'}, [{is_binary, '$1'}, {'<', '$2', Old}], [true]}]),
    erlang:send_after(?SWEEP_MS, self(), sweep),
    {noreply, State};
handle_info(_Info, State) ->
    {noreply, State}.

boot(#{id := Id} = S) ->
    Spec = maps:with([command, url, tls], S),
    case register_server(Id, Spec, maps:with([capabilities, timeout_ms], S)) of
        ok -> ok;
        {error, Reason} -> logger:error("erlmcp_flow: MCP server ~ts did not start: ~0p", [Id, Reason])
    end.
