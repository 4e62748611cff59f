-module(erlmcp_flow_mcp_agent_tests).

-include_lib("eunit/include/eunit.hrl").

-import(erlmcp_flow_test_util, [wait_until/1]).

%% MCP servers as agents, against servers that misbehave: a scripted
%% Streamable HTTP server (erlmcp_flow_scripted_http, a real listener on
%% loopback) pages its tools, answers in event streams and batches, asks its
%% client things, fails calls in every way MCP allows, goes away and comes
%% back; others refuse the handshake or the tool list. (erlmcp_flow_mcp_SUITE
%% runs the packaged servers and the Python SDK.)

-define(SESSION, <<"scripted-session-1">>).

agent_test_() ->
    {setup,
     fun() ->
             {ok, _} = application:ensure_all_started(inets),
             Apps = erlmcp_flow_test_util:start(),
             ets:new(?MODULE, [named_table, public]),
             Apps
     end,
     fun(Apps) ->
             ets:delete(?MODULE),
             erlmcp_flow_test_util:unregister_all(),
             erlmcp_flow_test_util:stop(Apps)
     end,
     [{timeout, 60, {"a server that pages its tools, streams, asks, and fails calls", fun scripted/0}},
      {timeout, 60, {"a server that goes away mid-call is restarted and serves again", fun restarted/0}},
      {timeout, 60, {"servers that refuse the handshake or the tool list, or are not there", fun refused/0}},
      {timeout, 60, {"what a Streamable HTTP server sends during a call goes to the call's session",
                     fun relayed_over_http/0}}]}.

%%--------------------------------------------------------------------
%% The script
%%--------------------------------------------------------------------

result(Id, R) -> #{jsonrpc => <<"2.0">>, id => Id, result => R}.

tool(Name) -> #{name => Name, inputSchema => #{type => <<"object">>}}.

text(T) -> #{content => [#{type => <<"text">>, text => T}]}.

%% The scripted server's answers, by method and tool name.
script(#{<<"method">> := <<"initialize">>, <<"id">> := Id}, _Headers) ->
    {200, [{<<"mcp-session-id">>, ?SESSION}], "application/json",
     erlmcp_flow_test_json:encode(result(Id, #{protocolVersion => <<"2025-11-25">>,
                                               capabilities => #{tools => #{listChanged => true}},
                                               serverInfo => #{name => <<"scripted">>, version => <<"1">>}}))};
script(#{<<"method">> := <<"tools/list">>, <<"id">> := Id} = Msg, _Headers) ->
    case Msg of
        #{<<"params">> := #{<<"cursor">> := <<"page-2">>}} ->
            Extra = [tool(<<"extra">>) || grown()],
            %% the second page as a batch of one
            {json, [result(Id, #{tools => [tool(<<"slow">>), tool(<<"crash">>) | Extra]})]};
        _ ->
            %% the first page in an event stream, after two requests of its own
            {sse, [#{jsonrpc => <<"2.0">>, id => <<"s-ping">>, method => <<"ping">>},
                   #{jsonrpc => <<"2.0">>, id => <<"s-sampling">>, method => <<"sampling/createMessage">>,
                     params => #{messages => []}},
                   result(Id, #{tools => [tool(<<"echo">>), tool(<<"fail">>), tool(<<"odd">>),
                                          tool(<<"iserr">>), tool(<<"grow">>), tool(<<"relay">>)],
                                nextCursor => <<"page-2">>})]}
    end;
script(#{<<"method">> := <<"tools/call">>, <<"id">> := Id,
         <<"params">> := #{<<"name">> := Name} = P}, _Headers) ->
    case Name of
        <<"echo">> -> {json, result(Id, text(maps:get(<<"arguments">>, P)))};
        <<"fail">> -> {json, #{jsonrpc => <<"2.0">>, id => Id,
                               error => #{code => -32602, message => <<"bad arguments">>}}};
        <<"odd">> -> {json, #{jsonrpc => <<"2.0">>, id => Id, surprise => true}};
        <<"iserr">> -> {json, result(Id, (text(<<"it went wrong">>))#{isError => true})};
        <<"grow">> ->
            ets:insert(?MODULE, {grown}),
            {sse, [#{jsonrpc => <<"2.0">>, method => <<"notifications/tools/list_changed">>},
                   result(Id, text(<<"grown">>))]};
        <<"slow">> ->
            timer:sleep(1500),
            {json, result(Id, text(<<"late">>))};
        <<"crash">> ->
            {500, [], "text/plain", <<"internal error">>};
        <<"relay">> ->
            %% during the call, on its own stream: progress for the token
            %% it was given, a log message, a request of its own it then
            %% gives up, then the result
            Token = maps:get(<<"progressToken">>, maps:get(<<"_meta">>, P, #{}), null),
            {sse, [#{jsonrpc => <<"2.0">>, method => <<"notifications/progress">>,
                     params => #{progressToken => Token, progress => 1, total => 2}},
                   #{jsonrpc => <<"2.0">>, method => <<"notifications/message">>,
                     params => #{level => <<"info">>, data => <<"working">>}},
                   #{jsonrpc => <<"2.0">>, id => <<"s-roots">>, method => <<"roots/list">>},
                   #{jsonrpc => <<"2.0">>, method => <<"notifications/cancelled">>,
                     params => #{requestId => <<"s-roots">>, reason => <<"no longer needed">>}},
                   result(Id, text(<<"relayed">>))]}
    end;
script(_NotificationOrResponse, _Headers) ->
    accepted.

grown() ->
    try ets:member(?MODULE, grown)
    catch error:badarg -> false %% no table: the cases outside the group
    end.

%% Every message the server received so far: [{Msg, Headers}].
received() ->
    receive {scripted_http_got, _, Msg, H} -> [{Msg, H} | received()]
    after 0 -> []
    end.

%% The messages received until `Enough' holds for all of them.
received_until(Enough) ->
    received_until(Enough, [], erlang:monotonic_time(millisecond) + 5000).

received_until(Enough, Acc, Deadline) ->
    case Enough(Acc) of
        true ->
            Acc;
        false ->
            Left = max(0, Deadline - erlang:monotonic_time(millisecond)),
            receive {scripted_http_got, _, Msg, H} -> received_until(Enough, Acc ++ [{Msg, H}], Deadline)
            after Left -> error({not_received, Acc})
            end
    end.

await_received(Pred) ->
    receive {scripted_http_got, _, Msg, H} ->
            case Pred(Msg) of
                true -> {Msg, H};
                false -> await_received(Pred)
            end
    after 5000 -> error(not_received)
    end.

call(Tool, Args) ->
    erlmcp_flow:execute(#{tool => Tool, arguments => Args},
                        #{capabilities => [<<"tool:", Tool/binary>>], idempotent => false}).

%%--------------------------------------------------------------------
%% Cases
%%--------------------------------------------------------------------

scripted() ->
    {Server, Port} = erlmcp_flow_scripted_http:start(fun script/2),
    Url = erlmcp_flow_scripted_http:url(Port),
    ok = erlmcp_flow_mcp:register_server(<<"scripted">>, #{url => list_to_binary(Url)},
                                         #{capabilities => [<<"scripted">>]}),
    %% both pages of tools
    [#{status := ready, tools := Tools}] = [S || #{id := <<"scripted">>} = S <- erlmcp_flow_mcp:servers()],
    ?assertEqual([<<"crash">>, <<"echo">>, <<"fail">>, <<"grow">>, <<"iserr">>, <<"odd">>, <<"relay">>,
                  <<"slow">>],
                 lists:sort(Tools)),
    %% its requests were answered: ping with {}, sampling refused (the
    %% answers go out on connections of their own: wait for them)
    Got = received_until(fun(Got) ->
                                 Ids = [I || {#{<<"id">> := I}, _} <- Got],
                                 Methods = [M || {#{<<"method">> := M}, _} <- Got],
                                 lists:member(<<"s-ping">>, Ids) andalso lists:member(<<"s-sampling">>, Ids)
                                     andalso lists:member(<<"notifications/initialized">>, Methods)
                         end),
    [{Ping, PingH}] = [X || {#{<<"id">> := <<"s-ping">>}, _} = X <- Got],
    ?assertEqual(#{}, maps:get(<<"result">>, Ping)),
    ?assertEqual(?SESSION, proplists:get_value(<<"mcp-session-id">>, PingH)),
    [Sampling] = [M || {#{<<"id">> := <<"s-sampling">>} = M, _} <- Got],
    ?assertMatch(#{<<"error">> := #{<<"code">> := -32601}}, Sampling),
    ?assert(lists:any(fun({#{<<"method">> := <<"notifications/initialized">>}, _}) -> true;
                         (_) -> false
                      end, Got)),
    %% calls: a result, an error object, a malformed answer, isError
    ?assertMatch({ok, #{<<"content">> := [#{<<"text">> := #{<<"x">> := 1}}]}, #{agent_id := <<"scripted">>}},
                 call(<<"echo">>, #{x => 1})),
    %% the server refuses the call's arguments: the caller's error
    ?assertMatch({error, {rejected, {mcp_error, -32602, <<"bad arguments">>}}}, call(<<"fail">>, #{})),
    ?assertMatch({error, {agent_error, {bad_mcp_reply, #{<<"surprise">> := true}}}}, call(<<"odd">>, #{})),
    ?assertMatch({error, {rejected, {tool_error, #{<<"isError">> := true}}}}, call(<<"iserr">>, #{})),
    %% a task JSON cannot carry, a task that is not a tool call
    ?assertMatch({error, {rejected, {unencodable_task, _}}}, call(<<"echo">>, #{pid => self()})),
    ?assertMatch({error, {rejected, {bad_task, _, _}}},
                 erlmcp_flow:execute(#{n => 1}, #{capabilities => [<<"scripted">>], idempotent => false})),
    %% the router stops waiting: the server is told, the late answer dropped
    _ = received(),
    ?assertEqual({error, execution_timeout},
                 erlmcp_flow:execute(#{tool => <<"slow">>, arguments => #{}},
                                     #{capabilities => [<<"tool:slow">>], idempotent => false, timeout => 200})),
    {Cancelled, _} = await_received(fun(M) -> maps:get(<<"method">>, M, none) =:= <<"notifications/cancelled">> end),
    ?assertMatch(#{<<"params">> := #{<<"requestId">> := _}}, Cancelled),
    %% a list_changed in a call's stream: the tools are listed again
    ?assertMatch({ok, _, _}, call(<<"grow">>, #{})),
    wait_until(fun() ->
                       [#{tools := T}] = [S || #{id := <<"scripted">>} = S <- erlmcp_flow_mcp:servers()],
                       lists:member(<<"extra">>, T)
               end),
    %% the caller's trace reaches the server in _meta
    _ = received(),
    TP = <<"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01">>,
    {ok, _, _} = erlmcp_flow:execute(#{tool => <<"echo">>, arguments => #{}},
                                     #{capabilities => [<<"tool:echo">>], traceparent => TP,
                                       tracestate => <<"vendor=1">>}),
    {Traced, _} = await_received(fun(M) -> maps:get(<<"method">>, M, none) =:= <<"tools/call">> end),
    ?assertMatch(#{<<"params">> := #{<<"_meta">> := #{<<"tracestate">> := <<"vendor=1">>,
                                                      <<"traceparent">> := <<"00-0af7651916cd43dd8448eb211c80319c-", _/binary>>}}},
                 Traced),
    {ok, Pid} = erlmcp_flow:find_agent(<<"scripted">>),
    ?assertEqual(ok, erlmcp_flow_mcp_agent:await_ready(Pid, 1000)),
    Pid ! {cancel_task, make_ref()},
    ?assertEqual({error, unknown_call}, gen_server:call(Pid, nonsense)),
    gen_server:cast(Pid, nonsense),
    Pid ! nonsense,
    ?assertMatch(#{status := ready}, erlmcp_flow_mcp_agent:info(Pid)),
    ok = erlmcp_flow_mcp:unregister_server(<<"scripted">>),
    ?assertEqual(undefined, erlmcp_flow_mcp_agent:info(Pid)),
    erlmcp_flow_scripted_http:stop(Server).

%% A call answered with HTTP 500: the call fails as the server being down,
%% its agent leaves routing, and the server is connected again after the
%% backoff and serves.
restarted() ->
    {Server, Port} = erlmcp_flow_scripted_http:start(fun script/2),
    ok = erlmcp_flow_mcp:register_server(<<"phoenix">>, #{url => erlmcp_flow_scripted_http:url(Port)}, #{}),
    ?assertMatch({error, {agent_error, {server_down, {http_status, 500}}}}, call(<<"crash">>, #{})),
    wait_until(fun() ->
                       [#{status := S, restarts := R}] =
                           [X || #{id := <<"phoenix">>} = X <- erlmcp_flow_mcp:servers()],
                       S =:= ready andalso R =:= 1
               end),
    ?assertMatch({ok, _, #{agent_id := <<"phoenix">>}}, call(<<"echo">>, #{again => true})),
    ok = erlmcp_flow_mcp:unregister_server(<<"phoenix">>),
    erlmcp_flow_scripted_http:stop(Server).

refused() ->
    Refuse = fun(#{<<"method">> := <<"initialize">>, <<"id">> := Id}, _) ->
                     {json, #{jsonrpc => <<"2.0">>, id => Id,
                              error => #{code => -32602, message => <<"unsupported version">>}}};
                (_, _) -> accepted
             end,
    {S1, P1} = erlmcp_flow_scripted_http:start(Refuse),
    ?assertMatch({error, {initialize_refused, #{<<"message">> := <<"unsupported version">>}}},
                 erlmcp_flow_mcp:register_server(<<"refuser">>, #{url => erlmcp_flow_scripted_http:url(P1)}, #{})),
    NoList = fun(#{<<"method">> := <<"tools/list">>, <<"id">> := Id}, _) ->
                     {json, #{jsonrpc => <<"2.0">>, id => Id, error => #{code => -32601, message => <<"no tools">>}}};
                (Msg, H) -> script(Msg, H)
             end,
    {S2, P2} = erlmcp_flow_scripted_http:start(NoList),
    ?assertMatch({error, {tools_list_failed, #{<<"message">> := <<"no tools">>}}},
                 erlmcp_flow_mcp:register_server(<<"nolist">>, #{url => erlmcp_flow_scripted_http:url(P2)}, #{})),
    NotFound = fun(_, _) -> {404, [], "text/plain", <<"not here">>} end,
    {S3, P3} = erlmcp_flow_scripted_http:start(NotFound),
    ?assertEqual({error, {http_status, 404}},
                 erlmcp_flow_mcp:register_server(<<"notfound">>, #{url => erlmcp_flow_scripted_http:url(P3)}, #{})),
    %% nobody listens
    Closed = erlmcp_flow_test_util:closed_port(),
    ?assertMatch({error, {http_error, _}},
                 erlmcp_flow_mcp:register_server(<<"nobody">>, #{url => erlmcp_flow_scripted_http:url(Closed)}, #{})),
    %% a command given by a relative path that is not there
    ?assertMatch({error, {spawn_failed, _}},
                 erlmcp_flow_mcp:register_server(<<"nocmd">>, #{command => ["./no/such/mcp-server"]}, #{})),
    %% an agent that never came up: whoever asks later is told why; a task
    %% sent to it meanwhile is refused
    {ok, Pid} = erlmcp_flow_mcp_agent:start_link(<<"direct">>, #{url => erlmcp_flow_scripted_http:url(P1)}, #{}),
    ?assertMatch({error, {initialize_refused, _}}, erlmcp_flow_mcp_agent:await_ready(Pid, 5000)),
    ?assertMatch({error, {initialize_refused, _}}, erlmcp_flow_mcp_agent:await_ready(Pid, 5000)),
    Ref = make_ref(),
    Pid ! {execute_task, #{tool => <<"echo">>}, #{}, self(), Ref},
    receive {task_result, Ref, R} -> ?assertMatch({error, {server_restarting, <<"direct">>}}, R)
    after 5000 -> error(no_answer)
    end,
    ?assertMatch(#{status := restarting, restarts := 1, os_pid := undefined}, erlmcp_flow_mcp_agent:info(Pid)),
    unlink(Pid),
    exit(Pid, shutdown),
    %% a server slower to answer than the caller waits
    Slow = fun(#{<<"method">> := <<"initialize">>} = M, H) -> timer:sleep(1000), script(M, H);
              (M, H) -> script(M, H)
           end,
    {S4, P4} = erlmcp_flow_scripted_http:start(Slow),
    ?assertEqual({error, {not_ready, timeout}},
                 erlmcp_flow_mcp:register_server(<<"slowpoke">>, #{url => erlmcp_flow_scripted_http:url(P4)},
                                                 #{timeout_ms => 100})),
    %% an agent id another agent holds: the server comes up, its agent cannot
    {S5, P5} = erlmcp_flow_scripted_http:start(fun script/2),
    Holder = spawn(fun() -> receive stop -> ok end end),
    ok = erlmcp_flow:register_agent(<<"held">>, Holder, [<<"x">>]),
    {ok, Held} = erlmcp_flow_mcp_agent:start_link(<<"held">>, #{url => erlmcp_flow_scripted_http:url(P5)}, #{}),
    ?assertEqual({error, already_registered}, erlmcp_flow_mcp_agent:await_ready(Held, 5000)),
    ?assertEqual({ok, Holder}, erlmcp_flow:find_agent(<<"held">>)),
    unlink(Held),
    exit(Held, shutdown),
    ok = erlmcp_flow:unregister_agent(<<"held">>),
    [erlmcp_flow_scripted_http:stop(S) || S <- [S4, S5]],
    ?assertEqual([], [X || #{id := Id} = X <- erlmcp_flow_mcp:servers(),
                           lists:member(Id, [<<"refuser">>, <<"nolist">>, <<"notfound">>, <<"nobody">>, <<"nocmd">>])]),
    [erlmcp_flow_scripted_http:stop(S) || S <- [S1, S2, S3]],
    ok.

%% The configuration's `mcp.servers' start at boot; await_configured/1
%% waits for all of them, and says so when one never comes; a malformed
%% server entry stops the start.
configured_test_() ->
    {timeout, 60, fun configured/0}.

configured() ->
    {ok, _} = application:ensure_all_started(inets),
    {Server, Port} = erlmcp_flow_scripted_http:start(fun script/2),
    Closed = erlmcp_flow_test_util:closed_port(),
    Servers = [#{id => <<"booted">>, url => erlmcp_flow_scripted_http:url(Port), capabilities => [<<"b">>]},
               #{id => <<"never">>, url => list_to_binary(erlmcp_flow_scripted_http:url(Closed))}],
    erlmcp_flow_test_util:with_env(
      [{mcp, #{servers => Servers}}],
      fun() ->
              ?assertEqual({error, timeout}, erlmcp_flow_mcp:await_configured(300)),
              wait_until(fun() -> [ready] =:= [S || #{id := <<"booted">>, status := S} <- erlmcp_flow_mcp:servers()] end),
              ?assertMatch({ok, _}, erlmcp_flow:find_agent(<<"booted">>)),
              ?assertEqual([], [S || #{id := <<"never">>} = S <- erlmcp_flow_mcp:servers()])
      end),
    erlmcp_flow_scripted_http:stop(Server),
    [begin
         _ = application:load(erlmcp_flow),
         ok = application:set_env(erlmcp_flow, mcp, #{servers => Bad}),
         ?assertMatch({error, {{invalid_config, {mcp, servers}, _}, _}}, application:start(erlmcp_flow)),
         application:unset_env(erlmcp_flow, mcp)
     end || Bad <- [[#{id => <<"x">>}], [#{url => "http://h/"}], nope]],
    ok.

%% With the application stopped, every call says so; sessions idle for an
%% hour are swept.
not_started_and_sweep_test() ->
    _ = application:stop(erlmcp_flow),
    ?assertEqual({error, not_started}, erlmcp_flow_mcp:register_server(<<"x">>, #{url => "http://127.0.0.1:1/"}, #{})),
    ?assertEqual({error, not_started}, erlmcp_flow_mcp:declare_tool(<<"t">>, #{})),
    ?assertEqual([], erlmcp_flow_mcp:servers()),
    ?assertMatch(#{<<"name">> := <<"t">>, <<"inputSchema">> := #{<<"type">> := <<"object">>},
                   <<"description">> := <<"The tool t", _/binary>>},
                 erlmcp_flow_mcp_tools:tool(<<"t">>)),
    erlmcp_flow_test_util:with_env(
      [],
      fun() ->
              Now = erlang:monotonic_time(millisecond),
              Info = #{level => undefined, caps => #{}},
              ets:insert(erlmcp_flow_mcp_sessions, [{<<"old">>, <<"2025-11-25">>, Now - 3600001, undefined, Info},
                                                   {<<"fresh">>, <<"2025-11-25">>, Now, undefined, Info}]),
              erlmcp_flow_mcp ! sweep,
              ?assertEqual({error, unknown_call}, gen_server:call(erlmcp_flow_mcp, nonsense)),
              gen_server:cast(erlmcp_flow_mcp, nonsense),
              erlmcp_flow_mcp ! nonsense,
              _ = sys:get_state(erlmcp_flow_mcp),
              ?assertEqual([], ets:lookup(erlmcp_flow_mcp_sessions, <<"old">>)),
              ?assertMatch([_], ets:lookup(erlmcp_flow_mcp_sessions, <<"fresh">>))
      end).

%% A call from a session (the relay in the call's context, as the MCP fronts
%% give it) to a Streamable HTTP server that sends things on the call's
%% stream: each reaches the session, the progress with the session's own
%% token, the server's request under the server's id with the agent to
%% answer, and its cancellation.
relayed_over_http() ->
    {Server, Port} = erlmcp_flow_scripted_http:start(fun script/2),
    ok = erlmcp_flow_mcp:register_server(<<"relaying">>,
                                         #{url => list_to_binary(erlmcp_flow_scripted_http:url(Port))}, #{}),
    %% two URL servers at once, each with its own HTTP client (a second one
    %% crashed on the first one's named tables)
    ok = erlmcp_flow_mcp:register_server(<<"relaying-2">>,
                                         #{url => list_to_binary(erlmcp_flow_scripted_http:url(Port))}, #{}),
    ok = erlmcp_flow_mcp:unregister_server(<<"relaying-2">>),
    try
        Ref = make_ref(),
        {ok, #{<<"content">> := [#{<<"text">> := <<"relayed">>}]}} =
            erlmcp_flow_mcp_server:call(<<"tools/call">>,
                                        #{<<"name">> => <<"relay">>, <<"arguments">> => #{},
                                          <<"_meta">> => #{<<"progressToken">> => <<"caller-token">>}},
                                        #{relay => {self(), Ref}}),
        Relayed = fun F() -> receive {mcp_relay, Ref, M} -> [M | F()] after 0 -> [] end end,
        [Progress, Log, {request, Agent, <<"s-roots">>, <<"roots/list">>, _},
         {cancelled, Agent, <<"s-roots">>, <<"no longer needed">>}] = Relayed(),
        ?assertMatch({notification, <<"notifications/progress">>,
                      #{<<"progressToken">> := <<"caller-token">>, <<"progress">> := 1}}, Progress),
        ?assertMatch({notification, <<"notifications/message">>, #{<<"data">> := <<"working">>}}, Log),
        ?assert(is_pid(Agent)),
        %% a late answer to the request the server gave up: passed on, harmless
        Agent ! {mcp_client_answer, <<"s-roots">>, {ok, #{roots => []}}},
        %% the level the sessions ask for reaches a server only when it logs
        Agent ! {set_log_level, <<"debug">>},
        ?assertMatch(#{status := ready}, erlmcp_flow_mcp_agent:info(Agent))
    after
        erlmcp_flow_mcp:unregister_server(<<"relaying">>),
        erlmcp_flow_scripted_http:stop(Server)
    end.
