%% @private
%% @doc The MCP descriptions of tools (`inputSchema', `description',
%% `annotations', ...) that the MCP front lists and reads: a named ETS table
%% that readers read directly, written through this server. Servers behind
%% erlmcp_flow declare theirs when they list them
%% (`erlmcp_flow_mcp_agent'); Erlang agents through
%% `erlmcp_flow_mcp:declare_tool/2'.
-module(erlmcp_flow_mcp_tools).
-behaviour(gen_server).

%% API
-export([start_link/0]).
-export([declare/2]).
-export([tool/1]).
-export([idempotent/1]).
-export([json_keys/1]).

%% gen_server callbacks
-export([init/1]).
-export([handle_call/3]).
-export([handle_cast/2]).
-export([handle_info/2]).

-define(TOOLS, erlmcp_flow_mcp_tools).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Declares the description of the tool `Name' (checked by the caller).
-spec declare(binary(), map()) -> ok | {error, not_started}.
declare(Name, Tool) ->
    erlmcp_flow_call:call(?MODULE, {declare, Name, Tool}, 5000).

%% @doc The MCP description of a tool (`{"type": "object"}' as its schema
%% and a sentence naming the tool as its description when none was
%% declared: MCP hosts show the description, and conformance asks for one).
-spec tool(binary()) -> map().
tool(Name) ->
    Declared = try ets:lookup(?TOOLS, Name) of
                   [{Name, T}] -> T;
                   [] -> #{}
               catch error:badarg -> #{}
               end,
    Default = #{<<"inputSchema">> => #{<<"type">> => <<"object">>},
                <<"description">> => iolist_to_binary(["The tool ", [Name || is_binary(Name)],
                                                       ", served by the agents erlmcp_flow routes to"])},
    Base = maps:merge(Default, json_keys(Declared)),
    Base#{<<"name">> => Name}.

%% @doc Whether a tool is declared idempotent (`annotations.idempotentHint'):
%% only those are retried on another agent.
-spec idempotent(binary()) -> boolean().
idempotent(Name) ->
    case tool(Name) of
        #{<<"annotations">> := #{<<"idempotentHint">> := true}} -> true;
        _ -> false
    end.

%% @doc A map's atom keys as binaries (the tools' descriptions are read
%% with binary keys, as they come from servers).
-spec json_keys(map()) -> map().
json_keys(M) when is_map(M) ->
    maps:fold(fun(K, V, A) when is_atom(K) -> A#{atom_to_binary(K) => V};
                 (K, V, A) -> A#{K => V}
              end, #{}, M).

%%====================================================================
%% gen_server callbacks
%%====================================================================

%% @private
-spec init([]) -> {ok, #{}}.
init([]) ->
    _ = ets:new(?TOOLS, [named_table, protected, set, {read_concurrency, true}]),
    {ok, #{}}.

%% @private
-spec handle_call(term(), gen_server:from(), map()) -> {reply, term(), map()}.
handle_call({declare, Name, Tool}, _From, State) ->
    ets:insert(?TOOLS, {Name, Tool}),
    {reply, ok, State};
handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

%% @private
-spec handle_cast(term(), map()) -> {noreply, map()}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%% @private
-spec handle_info(term(), map()) -> {noreply, map()}.
handle_info(_Info, State) ->
    {noreply, State}.
