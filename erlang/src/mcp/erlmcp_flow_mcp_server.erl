%% @doc erlmcp_flow as an MCP server: the methods, whatever the transport
%% (`bin/erlmcp-flow stdio --mcp', `POST /mcp').
%%
%% Protocol versions 2025-03-26, 2025-06-18 and 2025-11-25: `initialize'
%% answers the version the client asks for when it is one of them, else the
%% newest (the client then decides whether to go on). Each version keeps its
%% own rules (`shape/3'): a 2025-03-26 session gets no `title',
%% `outputSchema', `icons' in tools nor `structuredContent' in results (they
%% came later), a 2025-06-18 one no `icons'; batches are refused from
%% 2025-06-18 on (by the transports). Capabilities: `tools' with
%% `listChanged', `logging', `resources'.
%%
%% Relaying: a `tools/call' made with a relay (`call/3': the session's
%% process and the call's reference) passes the caller's
%% `_meta.progressToken' to the server behind, whose progress, log messages
%% and requests to the client (sampling, elicitation, roots) come back to
%% that session (`erlmcp_flow_mcp_agent').
%%
%% Resources: one per tool, `erlmcp-flow://tools/NAME', the router's own
%% knowledge of it: the agents (servers) serving it, their health (breaker,
%% in flight, latency, success ratio) and the learned preference
%% (`explain/1': Q-value, visits, softmax share).
%%
%% `tools/list' (a page of 50, `nextCursor' for the next) lists every tool
%% the routed agents serve, an agent serving the tool `NAME' by holding the
%% capability `tool:NAME' (its schema from `erlmcp_flow_mcp:declare_tool/2'
%% or from the MCP server the agent is; `{"type": "object"}' otherwise),
%% and the router's own tools `flow_route_task', `flow_explain',
%% `flow_stats' and `flow_trace'. `tools/call' of an agent's tool routes
%% `#{tool => Name, arguments => Args}' through `execute/3' with
%% `tool:NAME' as the required capability, so the strategy, breakers,
%% retries (only for tools annotated `idempotentHint') and tracing apply;
%% a `traceparent' in the request's `_meta' joins the caller's trace, and
%% the result's `_meta' carries the routing
%% (`{"erlmcp_flow": {"agent_id", "attempts", "trace_id"}}'). A tool that
%% fails is a result with `isError'; an unknown tool is the JSON-RPC error
%% -32602.
-module(erlmcp_flow_mcp_server).

-export([versions/0]).
-export([initialize/1]).
-export([call/2]).
-export([tools/0]).
-export([tool_names/0]).
-export([call/3]).
-export([answer/3]).
-export([shape/3]).
-export([log_level/1]).
-export([log_levels/0]).
-export([readable/1]).
-export([admits/2]).
-export([can_ask/3]).
-export([asked_id/0]).
-export([not_asked/2, not_asked/3]).
-export([server_info/0]).

-define(VERSIONS, [<<"2025-11-25">>, <<"2025-06-18">>, <<"2025-03-26">>]).
-define(LEVELS, [<<"debug">>, <<"info">>, <<"notice">>, <<"warning">>, <<"error">>,
                 <<"critical">>, <<"alert">>, <<"emergency">>]).
-define(RESOURCE, "erlmcp-flow://tools/").
-define(PAGE, 50).
-define(PREFIX, "tool:").

%% @doc The protocol versions spoken, newest first.
-spec versions() -> [binary()].
versions() ->
    ?VERSIONS.

-spec server_info() -> map().
server_info() ->
    {ok, Vsn} = application:get_key(erlmcp_flow, vsn),
    #{name => <<"erlmcp_flow">>, title => <<"erlmcp_flow router">>,
      version => list_to_binary(Vsn)}.

%% @doc The `initialize' result and the version agreed.
-spec initialize(term()) -> {ok, map(), binary()}.
initialize(Params) ->
    Asked = case Params of
                #{<<"protocolVersion">> := V} when is_binary(V) -> V;
                _ -> undefined
            end,
    Version = case lists:member(Asked, ?VERSIONS) of
                  true -> Asked;
                  false -> hd(?VERSIONS)
              end,
    {ok, #{protocolVersion => Version,
           capabilities => #{tools => #{listChanged => true}, logging => #{},
                             resources => #{}},
           serverInfo => server_info(),
           instructions => <<"Tools are served by the agents erlmcp_flow routes to; "
                             "flow_* tools are the router's own.">>},
     Version}.

%% @doc One request of an initialized session: `{ok, Result}', `{error,
%% Code, Message, Data}', or `cancelled' (a `tools/call' stopped by
%% `notifications/cancelled': no answer is due).
-spec call(binary(), term()) -> {ok, map()} | {error, integer(), binary(), term()} | cancelled.
call(Method, Params) ->
    call(Method, Params, #{}).

%% @doc As `call/2', for a session that relays: `Ctx' may hold `relay =>
%% {Pid, Ref}' (where the server's messages during a `tools/call' go, see
%% `erlmcp_flow_mcp_agent').
-spec call(binary(), term(), map()) ->
          {ok, map()} | {error, integer(), binary(), term()} | cancelled.
call(<<"ping">>, _Params, _Ctx) ->
    {ok, #{}};
call(<<"tools/list">>, Params, _Ctx) ->
    case cursor(Params) of
        {ok, Offset} ->
            All = tools(),
            Page = lists:sublist(All, Offset + 1, ?PAGE),
            Next = case Offset + ?PAGE < length(All) of
                       true -> #{nextCursor => base64:encode(integer_to_binary(Offset + ?PAGE))};
                       false -> #{}
                   end,
            {ok, Next#{tools => Page}};
        error ->
            {error, -32602, <<"Invalid params">>, #{reason => <<"bad cursor">>}}
    end;
call(<<"tools/call">>, #{<<"name">> := Name} = Params, Ctx) when is_binary(Name) ->
    Args = case maps:get(<<"arguments">>, Params, #{}) of
               A when is_map(A) -> A;
               _ -> invalid
           end,
    Meta = case maps:get(<<"_meta">>, Params, #{}) of
               M when is_map(M) -> M;
               _ -> #{}
           end,
    case Args of
        invalid -> {error, -32602, <<"Invalid params">>, #{reason => <<"arguments must be an object">>}};
        _ -> call_tool(Name, Args, Meta, Ctx)
    end;
call(<<"tools/call">>, _Params, _Ctx) ->
    {error, -32602, <<"Invalid params">>, #{reason => <<"tools/call takes {\"name\", \"arguments\"?}">>}};
call(<<"logging/setLevel">>, Params, _Ctx) ->
    case log_level(Params) of
        {ok, _} -> {ok, #{}};
        {error, _, _, _} = E -> E
    end;
call(<<"resources/list">>, _Params, _Ctx) ->
    {ok, #{resources => [resource(N) || N <- tool_names()]}};
call(<<"resources/templates/list">>, _Params, _Ctx) ->
    {ok, #{resourceTemplates =>
               [#{uriTemplate => <<?RESOURCE, "{name}">>, name => <<"tool">>,
                  description => <<"What erlmcp_flow knows of a tool: its servers, their health, "
                                   "the learned preference">>,
                  mimeType => <<"application/json">>}]}};
call(<<"resources/read">>, #{<<"uri">> := <<?RESOURCE, Name/binary>> = Uri}, _Ctx) ->
    case lists:member(Name, tool_names()) of
        true ->
            {ok, #{contents => [#{uri => Uri, mimeType => <<"application/json">>,
                                  text => knowledge(Name)}]}};
        false ->
            {error, -32002, <<"Resource not found">>, #{uri => Uri}}
    end;
call(<<"resources/read">>, #{<<"uri">> := Uri}, _Ctx) when is_binary(Uri) ->
    {error, -32002, <<"Resource not found">>, #{uri => Uri}};
call(<<"resources/read">>, _Params, _Ctx) ->
    {error, -32602, <<"Invalid params">>, #{reason => <<"resources/read takes {\"uri\"}">>}};
call(Method, _Params, _Ctx) ->
    {error, -32601, <<"Method not found">>, #{method => Method}}.

%% @doc As `call/3' for a front: a crash of the request is logged and
%% answered -32603, never taking the session down with it.
-spec answer(binary(), term(), map()) ->
          {ok, map()} | {error, integer(), binary(), term()} | cancelled.
answer(Method, Params, Ctx) ->
    try call(Method, Params, Ctx)
    catch Class:Reason:Stack ->
            logger:error("erlmcp_flow: MCP request ~ts crashed: ~0p:~0p~n~0p",
                         [Method, Class, Reason, Stack]),
            {error, -32603, <<"Internal error">>, undefined}
    end.

%% @doc The levels of `logging/setLevel', most verbose first.
-spec log_levels() -> [binary()].
log_levels() ->
    ?LEVELS.

%% @doc The level a `logging/setLevel' asks for, or the error it gets.
-spec log_level(term()) -> {ok, binary()} | {error, integer(), binary(), map()}.
log_level(#{<<"level">> := L}) when is_binary(L) ->
    case lists:member(L, ?LEVELS) of
        true -> {ok, L};
        false -> {error, -32602, <<"Invalid params">>, #{reason => <<"unknown level">>, level => L}}
    end;
log_level(_) ->
    {error, -32602, <<"Invalid params">>, #{reason => <<"logging/setLevel takes {\"level\"}">>}}.

%% @doc Whether a session whose `logging/setLevel' is `Threshold' gets a log
%% message at `Level' (every one before any setLevel; a level MCP does not
%% name is passed on rather than judged).
-spec admits(binary() | undefined, term()) -> boolean().
admits(undefined, _Level) ->
    true;
admits(Threshold, Level) ->
    rank(Level) >= rank(Threshold).

rank(Level) ->
    length(lists:takewhile(fun(L) -> L =/= Level end, ?LEVELS)).

%% @doc Whether a server's request `Method' may be put to a client that
%% declared `ClientCaps' under `Version' (elicitation came with 2025-06-18;
%% ping is always allowed).
-spec can_ask(binary(), map(), binary() | undefined) -> boolean().
can_ask(<<"sampling/createMessage">>, Caps, _V) -> is_map_key(<<"sampling">>, Caps);
can_ask(<<"roots/list">>, Caps, _V) -> is_map_key(<<"roots">>, Caps);
can_ask(<<"elicitation/create">>, _Caps, <<"2025-03-26">>) -> false;
can_ask(<<"elicitation/create">>, Caps, _V) -> is_map_key(<<"elicitation">>, Caps);
can_ask(<<"ping">>, _Caps, _V) -> true;
can_ask(_, _, _) -> false.

%% @doc The id a server's request gets towards a client: the session's own
%% (`erlmcp_flow:N'), so that two servers' ids never clash.
-spec asked_id() -> binary().
asked_id() ->
    <<"erlmcp_flow:", (integer_to_binary(erlang:unique_integer([positive])))/binary>>.

%% @doc Tells the agent `Agent' that its server's request `ServerId' was not
%% put to the client, and why.
-spec not_asked(pid(), term()) -> ok.
not_asked(Agent, ServerId) ->
    not_asked(Agent, ServerId, <<"the client did not declare this capability">>).

-spec not_asked(pid(), term(), binary()) -> ok.
not_asked(Agent, ServerId, Why) ->
    Agent ! {mcp_client_answer, ServerId, {error, -32601, <<"Method not found">>, #{reason => Why}}},
    ok.

%% @doc A result as the session's protocol version has it: what came in a
%% later version is left out for an older client.
-spec shape(binary(), binary(), map()) -> map().
shape(<<"2025-11-25">>, _Method, Result) ->
    Result;
shape(Version, <<"tools/list">>, #{tools := Tools} = Result) ->
    Result#{tools := [maps:without(later_tool_keys(Version), json_keys(T)) || T <- Tools]};
shape(<<"2025-03-26">>, <<"tools/call">>, Result) ->
    maps:without([<<"structuredContent">>, structuredContent], Result);
shape(_Version, _Method, Result) ->
    Result.

later_tool_keys(<<"2025-03-26">>) -> [<<"title">>, <<"outputSchema">>, <<"icons">>];
later_tool_keys(_) -> [<<"icons">>].

json_keys(T) -> erlmcp_flow_mcp_tools:json_keys(T).

resource(Name) ->
    #{uri => <<?RESOURCE, Name/binary>>, name => Name,
      description => <<"erlmcp_flow's knowledge of the tool ", Name/binary,
                       ": its servers, their health, the learned preference">>,
      mimeType => <<"application/json">>}.

%% What the router knows of a tool, as JSON text.
knowledge(Name) ->
    Cap = <<?PREFIX, Name/binary>>,
    Servers = case erlmcp_flow:query_agents([Cap]) of
                  Ids when is_list(Ids) -> [server(Id) || Id <- Ids];
                  {error, _} -> []
              end,
    Preference = case erlmcp_flow:explain(#{capabilities => [Cap]}) of
                     {ok, #{candidates := Cs}} ->
                         [maps:with([id, q_value, aged_q_value, visits, softmax, state], C) || C <- Cs];
                     {error, _} ->
                         []
                 end,
    {ok, Json} = erlmcp_flow_jsonrpc:encode_json(
                   erlmcp_flow_rpc:jsonable(#{tool => Name, servers => Servers,
                                              learned_preference => Preference})),
    Json.

server(Id) ->
    Stats = case erlmcp_flow:agent_stats(Id) of
                {ok, S} -> S;
                {error, _} -> #{}
            end,
    Stats#{agent_id => Id}.

cursor(#{<<"cursor">> := C}) when is_binary(C) ->
    try binary_to_integer(base64:decode(C)) of
        N when N >= 0 -> {ok, N};
        _ -> error
    catch _:_ -> error
    end;
cursor(_) ->
    {ok, 0}.

%% @doc Every tool: the router's, then the agents' by name.
-spec tools() -> [map()].
tools() ->
    [erlmcp_flow_mcp_tools:json_keys(T) || T <- router_tools()]
        ++ [erlmcp_flow_mcp_tools:tool(Name) || Name <- tool_names()].

%% @doc The names of the tools the registered agents serve, sorted.
-spec tool_names() -> [binary()].
tool_names() ->
    lists:usort([Name || {_, _, _, Caps} <- erlmcp_flow_registry:list_agents(),
                         <<?PREFIX, Name/binary>> <- Caps, Name =/= <<>>]).

router_tools() ->
    Obj = fun(Props, Required) -> #{type => object, properties => Props, required => Required} end,
    Caps = #{type => array, items => #{type => string}},
    [#{name => <<"flow_route_task">>,
       description => <<"Route a task to an agent holding the capabilities and return its answer">>,
       inputSchema => Obj(#{task => #{type => object}, requirements => #{type => object}}, [<<"task">>])},
     #{name => <<"flow_explain">>,
       description => <<"Why the router would choose each agent for these capabilities">>,
       inputSchema => Obj(#{capabilities => Caps, task_class => #{type => string}}, [<<"capabilities">>]),
       annotations => #{readOnlyHint => true}},
     #{name => <<"flow_stats">>, description => <<"The router's node-wide figures">>,
       inputSchema => Obj(#{}, []), annotations => #{readOnlyHint => true}},
     #{name => <<"flow_trace">>, description => <<"The spans of a trace">>,
       inputSchema => Obj(#{trace_id => #{type => string}}, [<<"trace_id">>]),
       annotations => #{readOnlyHint => true}}].

call_tool(<<"flow_route_task">>, Args, _Meta, _Ctx) -> rpc(<<"flow.route_task">>, Args);
call_tool(<<"flow_explain">>, Args, _Meta, _Ctx) -> rpc(<<"flow.explain">>, Args);
call_tool(<<"flow_stats">>, Args, _Meta, _Ctx) -> rpc(<<"flow.stats">>, Args);
call_tool(<<"flow_trace">>, Args, _Meta, _Ctx) -> rpc(<<"flow.trace">>, Args);
call_tool(Name, Args, Meta, Ctx) ->
    case lists:member(Name, tool_names()) of
        false ->
            {error, -32602, <<"Unknown tool: ", Name/binary>>, #{tool => Name}};
        true ->
            Trace = maps:with([traceparent, tracestate],
                              #{traceparent => maps:get(<<"traceparent">>, Meta, none),
                                tracestate => maps:get(<<"tracestate">>, Meta, none)}),
            Req = maps:merge(#{capabilities => [<<?PREFIX, Name/binary>>],
                               idempotent => erlmcp_flow_mcp_tools:idempotent(Name)},
                             maps:filter(fun(_, V) -> is_binary(V) end, Trace)),
            process_flag(trap_exit, true),
            Answer = erlmcp_flow:execute(task(Name, Args, Meta, Ctx), Req,
                                         #{cancellable => true, error_meta => true}),
            tool_answer(Answer)
    end.

%% The task an agent gets: the tool and its arguments, and (when the
%% session relays) where the server's messages go and the caller's
%% progress token.
task(Name, Args, Meta, #{relay := {Pid, Ref}}) when is_pid(Pid) ->
    Token = case maps:get(<<"progressToken">>, Meta, undefined) of
                T when is_binary(T); is_integer(T) -> T;
                _ -> undefined
            end,
    #{tool => Name, arguments => Args,
      mcp => #{relay => {Pid, Ref}, progress_token => Token}};
task(Name, Args, _Meta, _Ctx) ->
    #{tool => Name, arguments => Args}.

%% The router's own tools: the JSON-RPC methods, their result as JSON text
%% and as structured content.
rpc(Method, Args) ->
    case erlmcp_flow_rpc:handle(Method, Args, #{transport => mcp}) of
        {ok, Result} ->
            {ok, text_result(Result, false)};
        {error, _Code, Message, Data} ->
            {ok, text_result(#{error => Message, data => Data}, true)}
    end.

tool_answer({ok, Result, Meta}) ->
    Routing = routing(Meta),
    case Result of
        #{<<"content">> := _} = ToolResult ->
            %% an MCP server's own result: passed on, with the routing added
            {ok, add_meta(ToolResult, Routing)};
        _ ->
            {ok, add_meta(text_result(Result, false), Routing)}
    end;
tool_answer({error, {stopped, _}, _Meta}) ->
    cancelled;
%% the server's own tool error, verbatim (`isError' included): the caller's
%% mistake, refused by the tool, never retried
tool_answer({error, {rejected, {tool_error, #{<<"content">> := _} = ToolResult}}, Meta}) ->
    {ok, add_meta(ToolResult#{<<"isError">> => true}, routing(Meta))};
%% the server refused the call's params: its JSON-RPC error, passed on
tool_answer({error, {rejected, {mcp_error, Code, Message}}, _Meta}) when is_integer(Code) ->
    {error, Code, Message, undefined};
tool_answer({error, {agent_error, {tool_error, #{<<"content">> := _} = ToolResult}}, Meta}) ->
    {ok, add_meta(ToolResult#{<<"isError">> => true}, routing(Meta))};
tool_answer({error, Reason, Meta}) ->
    {ok, add_meta(text_result(#{error => readable(Reason)}, true), routing(Meta))}.

%% @doc What went wrong, in words a host shows its user: the last attempt's
%% own answer where there was one, never an Erlang term.
-spec readable(term()) -> binary().
readable({no_available_agent, [_ | _] = Attempts}) ->
    #{agent_id := Id, reason := Last} = lists:last(Attempts),
    iolist_to_binary([integer_to_binary(length(Attempts)), " attempts failed; the last, on ",
                      Id, ": ", readable(Last)]);
readable({rejected, Why}) -> readable(Why);
readable({agent_error, Why}) -> readable(Why);
readable({tool_error, #{<<"content">> := Content}}) -> content_text(Content);
readable({mcp_error, _Code, Message}) when is_binary(Message) -> Message;
readable({rpc_error, _Code, Message}) when is_binary(Message) -> Message;
readable(execution_timeout) -> <<"the server did not answer in time">>;
readable({agent_down, _}) -> <<"the server went away during the call">>;
readable({server_down, _}) -> <<"the server went away during the call">>;
readable({server_restarting, Id}) when is_binary(Id) ->
    <<"the server ", Id/binary, " is restarting: try again shortly">>;
readable({server_not_ready, _}) -> <<"the server is not ready yet">>;
readable(no_agents_available) -> <<"no server offers this tool now">>;
readable(overloaded) -> <<"every server of this tool is busy">>;
readable(not_started) -> <<"the router is not running">>;
readable({bad_agent_reply, _}) -> <<"the server's answer was not MCP">>;
readable({bad_mcp_reply, _}) -> <<"the server's answer was not MCP">>;
readable({internal_error, _}) -> <<"internal error">>;
readable(R) when is_binary(R) -> R;
readable(R) when is_atom(R) -> atom_to_binary(R);
readable(_) -> <<"the call failed">>.

content_text(Content) when is_list(Content) ->
    iolist_to_binary(lists:join(<<" ">>, [T || #{<<"type">> := <<"text">>, <<"text">> := T} <- Content,
                                              is_binary(T)]));
content_text(_) ->
    <<>>.

%% Who answered: the agent of the answer, or of the last attempt.
routing(#{agent_id := _} = Meta) ->
    #{<<"erlmcp_flow">> => maps:with([agent_id, attempts, trace_id], Meta)};
routing(#{tried := [_ | _] = Tried} = Meta) ->
    #{agent_id := Last} = lists:last(Tried),
    routing(Meta#{agent_id => Last});
routing(Meta) ->
    #{<<"erlmcp_flow">> => maps:with([attempts, trace_id], Meta)}.

add_meta(Result, Routing) ->
    Old = case maps:get(<<"_meta">>, Result, #{}) of
              M when is_map(M) -> M;
              _ -> #{}
          end,
    maps:remove('_meta', Result#{<<"_meta">> => maps:merge(Old, Routing)}).

%% A result for a client: the term as JSON text, and as structured content
%% when it is an object.
text_result(Term, IsError) ->
    {Encoded, Json} = case erlmcp_flow_jsonrpc:encode_json(Term) of
                          {ok, B} -> {true, B};
                          {error, _} -> {false, iolist_to_binary(io_lib:format("~0p", [Term]))}
                      end,
    Base = #{<<"content">> => [#{<<"type">> => <<"text">>, <<"text">> => Json}],
             <<"isError">> => IsError},
    %% an object JSON can carry is its own structured content (encoded with
    %% the response, as the text above was)
    case is_map(Term) andalso Encoded of
        true -> Base#{<<"structuredContent">> => Term};
        false -> Base
    end.
