%% The test service of the W3C Trace Context validation harness, on
%% erlmcp_flow's public API only: an inets httpd module answers `POST /test'
%% by routing one task to an agent with the context the request's headers
%% carry (erlmcp_flow_correlation_tracker:incoming/1), and the agent makes
%% the callbacks the request's body lists, each under a child span of its
%% attempt (start_span/2), sending that span's `traceparent' and the
%% context's `tracestate'. The harness posts a JSON array of
%% `{"url": ..., "arguments": [...]}'; each element is a POST of
%% `arguments' to `url'.
%%
%%     erlmcp_flow_w3c_service:start(5000)  % then: python test.py http://127.0.0.1:5000/test
-module(erlmcp_flow_w3c_service).
-behaviour(erlmcp_flow_agent).

-include_lib("inets/include/httpd.hrl").

-export([start/1, stop/1, port/1]).
%% inets httpd module
-export([do/1]).
%% erlmcp_flow_agent callbacks
-export([init/1, handle_task/3]).

-define(CAP, <<"w3c-callbacks">>).

%% @doc Starts erlmcp_flow, the agent and the HTTP service on `Port' (0: a
%% free one); returns the httpd instance.
start(Port) ->
    {ok, _} = application:ensure_all_started(inets),
    {ok, _} = application:ensure_all_started(erlmcp_flow),
    case erlmcp_flow:find_agent(<<"w3c-caller">>) of
        {ok, _} -> ok;
        {error, not_found} ->
            {ok, Agent} = erlmcp_flow_agent:start(<<"w3c-caller">>, [?CAP], ?MODULE, []),
            unlink(Agent)
    end,
    Root = filename:join(os:getenv("TMPDIR", "/tmp"), "erlmcp_flow_w3c_service"),
    ok = filelib:ensure_path(Root),
    inets:start(httpd, [{port, Port}, {server_name, "erlmcp_flow_w3c"}, {server_root, Root},
                        {document_root, Root}, {bind_address, {127, 0, 0, 1}},
                        {modules, [?MODULE]}]).

stop(Httpd) ->
    inets:stop(httpd, Httpd).

port(Httpd) ->
    proplists:get_value(port, httpd:info(Httpd, [port])).

%% @private The request: one task whose agent makes the callbacks.
do(#mod{method = "POST", request_uri = "/test", parsed_header = Headers, entity_body = Body}) ->
    Calls = erlmcp_flow_test_json:decode(iolist_to_binary(Body)),
    %% inets lists the header fields last first: incoming/1 wants them in
    %% the order they came, since repeated tracestate fields combine in order
    Context = erlmcp_flow_correlation_tracker:incoming(lists:reverse(Headers)),
    Requirements = Context#{capabilities => [?CAP], timeout => 30000},
    Status = case erlmcp_flow:execute(#{calls => Calls}, Requirements, #{max_retry_attempts => 0}) of
                 {ok, _, _} -> 200;
                 {error, _} -> 500
             end,
    {proceed, [{response, {Status, "done"}}]};
do(_) ->
    {proceed, [{response, {404, "POST /test"}}]}.

%% @private
init([]) ->
    {ok, #{}}.

%% @private Each callback under a span of its own.
handle_task(#{calls := Calls}, Ctx, S) ->
    lists:foreach(fun(Call) -> callback(Ctx, Call) end, Calls),
    {ok, done, S}.

callback(Ctx, #{<<"url">> := Url, <<"arguments">> := Arguments}) ->
    Child = erlmcp_flow_agent:start_span(Ctx, <<"POST ", Url/binary>>),
    Headers = [{"traceparent", binary_to_list(erlmcp_flow_correlation_tracker:format_traceparent(Child))}
               | [{"tracestate", binary_to_list(TS)} || #{tracestate := TS} <- [Child]]],
    Body = iolist_to_binary(erlmcp_flow_test_json:encode(Arguments)),
    Outcome = case httpc:request(post, {binary_to_list(Url), Headers, "application/json", Body},
                                 [{timeout, 10000}], []) of
                  {ok, {{_, Code, _}, _, _}} when Code < 400 -> ok;
                  _ -> error
              end,
    ok = erlmcp_flow_agent:end_span(Child, Outcome).
