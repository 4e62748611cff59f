%% @doc JSON-RPC 2.0 messages and JSON, as the transports speak them. The
%% codec is the Rust core's (serde_json): a message is checked against its
%% limits before it is parsed (`transports.max_message_bytes', `max_depth',
%% `max_batch'), and messages past 64 KiB decode on a dirty scheduler.
%%
%% JSON to Erlang: objects are maps with binary keys, arrays lists, strings
%% binaries, `true', `false' and `null' atoms, integers that fit in 64 bits
%% integers, other numbers floats (a number past a float's range, such as
%% `1e400', makes the message a parse error). A request's id is an integer
%% when its text is one that fits, a binary, `null', or for any other number
%% `{json_number, Text}': ids go back exactly as they came. Erlang to JSON is
%% the same way back, and also takes atom keys, atoms as strings, and
%% `{json_number, Text}' (the exact text as an id, the float it reads as
%% elsewhere); a term JSON cannot carry (a pid, a tuple, a binary that is not
%% UTF-8, an integer past 64 bits, nesting past 512 levels) is
%% `{error, {unencodable, Why}}', `Why' a readable binary.
%%
%% Error codes: parse error -32700 (id null), invalid request -32600, method
%% not found -32601, invalid params -32602, internal error -32603, message
%% past the size limit -32012 (with `data' `#{maxSize, size}', as erlmcp),
%% request timeout -32009 (erlmcp). Nesting past `max_depth' and a batch
%% past `max_batch' are -32600 with `data' `#{maxDepth}' or `#{maxBatch}';
%% an empty batch is one -32600.
-module(erlmcp_flow_jsonrpc).

-export([decode/1, decode/2]).
-export([encode/1]).
-export([encode_json/1, decode_json/1, decode_json/2]).
-export([limits/0]).
-export([code/1]).
-export([responses/2]).
-export([response/2]).
-export([too_large/2]).
-export([too_large/3]).
-export([head_id/1]).

-export_type([id/0, item/0, message/0, limits/0]).

-type id() :: integer() | binary() | null | {json_number, binary()}.
-type json() :: term().
-type item() :: {request, id(), Method :: binary(), Params :: json() | undefined}
              | {notification, Method :: binary(), Params :: json() | undefined}
              | {response, id(), {ok, json()}
                                 | {error, integer(), binary(), Data :: json() | undefined}}
              | {invalid, id(), Code :: integer(), Message :: binary(), Data :: json() | undefined}.
-type message() :: {request, id(), binary() | atom(), json() | undefined}
                 | {notification, binary() | atom(), json() | undefined}
                 | {response, id(), {ok, json()} | {error, integer(), binary() | atom(), json() | undefined}}
                 | {batch, [message()]}.
-type limits() :: #{max_message_bytes := pos_integer(), max_depth := pos_integer(),
                    max_batch := pos_integer()}.

%% Messages past this decode, and terms past this (in external term format)
%% encode, on a dirty scheduler: the time of both grows with the size. The
%% normal-scheduler NIFs refuse more themselves (`{error, {dirty_only,
%% 16384}}': a term small in external format whose JSON is not), so that no
%% input makes them long.
-define(DIRTY_ABOVE, 16384).

%% @doc Decodes one message (one line of a stream, one HTTP body) within
%% the configured limits: `{single, Item}' or `{batch, [Item]}'. A message
%% refused whole (bad JSON, past a limit, an empty batch) is one `invalid'
%% item: the error response it gets.
-spec decode(binary()) -> {single, item()} | {batch, [item()]} | {error, {badarg, message}}.
decode(Bin) ->
    decode(Bin, limits()).

%% @doc As `decode/1' within `Limits'.
-spec decode(binary(), limits()) ->
          {single, item()} | {batch, [item()]} | {error, {badarg, message | limits}}.
decode(Bin, #{max_message_bytes := B, max_depth := D, max_batch := N} = Limits)
  when is_binary(Bin) ->
    case valid_limits(Limits) of
        false -> {error, {badarg, limits}};
        true when byte_size(Bin) > ?DIRTY_ABOVE ->
            erlmcp_flow_nif:jsonrpc_decode_dirty(Bin, B, D, N);
        true -> erlmcp_flow_nif:jsonrpc_decode(Bin, B, D, N)
    end;
decode(Bin, _) when is_binary(Bin) ->
    {error, {badarg, limits}};
decode(_, _) ->
    {error, {badarg, message}}.

valid_limits(Limits) ->
    lists:all(fun(V) -> is_integer(V) andalso V > 0 end, maps:values(Limits)).

%% @doc Encodes a request, a notification, a response or a batch of them.
-spec encode(message()) -> {ok, binary()} | {error, {unencodable, binary()}}.
encode(Message) ->
    encoded(Message, fun erlmcp_flow_nif:jsonrpc_encode/1,
            fun erlmcp_flow_nif:jsonrpc_encode_dirty/1).

%% @doc Encodes any term JSON can carry.
-spec encode_json(json()) -> {ok, binary()} | {error, {unencodable, binary()}}.
encode_json(Term) ->
    encoded(Term, fun erlmcp_flow_nif:json_encode/1, fun erlmcp_flow_nif:json_encode_dirty/1).

%% A large term goes to the dirty scheduler at once; a small one whose JSON
%% is not (escapes, small integers) after the normal call stopped at its
%% bound.
encoded(Term, Normal, Dirty) ->
    case erlang:external_size(Term) > ?DIRTY_ABOVE of
        false ->
            case Normal(Term) of
                {error, {dirty_only, _}} -> Dirty(Term);
                Encoded -> Encoded
            end;
        true ->
            Dirty(Term)
    end.

%% @doc Decodes any JSON within the configured size and depth.
-spec decode_json(binary()) -> {ok, json()} | {error, too_large | too_deep | parse_error
                                                | {badarg, json}}.
decode_json(Bin) ->
    decode_json(Bin, limits()).

%% @doc As `decode_json/1' within `Limits' (`max_batch' unused).
-spec decode_json(binary(), limits()) ->
          {ok, json()} | {error, too_large | too_deep | parse_error | {badarg, json | limits}}.
decode_json(Bin, #{max_message_bytes := B, max_depth := D} = Limits) when is_binary(Bin) ->
    case valid_limits(Limits) of
        true -> erlmcp_flow_nif:json_decode(Bin, B, D);
        false -> {error, {badarg, limits}}
    end;
decode_json(Bin, _) when is_binary(Bin) ->
    {error, {badarg, limits}};
decode_json(_, _) ->
    {error, {badarg, json}}.

%% @doc The configured limits (`transports' section), or the defaults when
%% the application is not running.
-spec limits() -> limits().
limits() ->
    maps:with([max_message_bytes, max_depth, max_batch], erlmcp_flow_config:get(transports)).

%% @doc The code of a JSON-RPC error.
-spec code(parse_error | invalid_request | method_not_found | invalid_params | internal_error
           | message_too_large | request_timeout) -> integer().
code(parse_error) -> -32700;
code(invalid_request) -> -32600;
code(method_not_found) -> -32601;
code(invalid_params) -> -32602;
code(internal_error) -> -32603;
code(message_too_large) -> -32012;
code(request_timeout) -> -32009.

%% @doc What a server sends back for a decoded message, `Handle' answering
%% each request and notification (`{ok, Result}', `{error, Code, Message,
%% Data}', or anything for a notification, whose answer is dropped):
%% `{reply, Binary}', or `noreply' when nothing is owed (notifications,
%% responses, a batch of only those). A result JSON cannot carry is answered
%% -32603 with `data' saying why.
-spec responses({single, item()} | {batch, [item()]},
                fun((Method :: binary(), Params :: json() | undefined) ->
                           {ok, json()} | {error, integer(), binary(), json() | undefined})) ->
          {reply, binary()} | noreply.
responses({single, Item}, Handle) ->
    case item_response(Item, Handle) of
        none -> noreply;
        {ok, Bin} -> {reply, Bin}
    end;
responses({batch, Items}, Handle) ->
    case [Bin || Item <- Items, {ok, Bin} <- [item_response(Item, Handle)]] of
        [] -> noreply;
        Bins -> {reply, iolist_to_binary([$[, lists:join($,, Bins), $]])}
    end.

item_response({request, Id, Method, Params}, Handle) ->
    Outcome = case Handle(Method, Params) of
                  {ok, Result} -> {ok, Result};
                  {error, Code, Msg, Data} when is_integer(Code) -> {error, Code, Msg, Data}
              end,
    {ok, response(Id, Outcome)};
item_response({notification, Method, Params}, Handle) ->
    _ = Handle(Method, Params),
    none;
item_response({response, _Id, _Outcome}, _Handle) ->
    none;
item_response({invalid, Id, Code, Msg, Data}, _Handle) ->
    {ok, response(Id, {error, Code, Msg, Data})}.

%% @doc The response to the request `Id' (an id as decoded), encoded; a
%% result JSON cannot carry is answered -32603 with `data.reason' saying why.
%% Every transport answers through it.
-spec response(id(), {ok, json()} | {error, integer(), binary(), json() | undefined}) -> binary().
response(Id, Outcome) ->
    case encode({response, Id, Outcome}) of
        {ok, Bin} ->
            Bin;
        {error, {unencodable, Why}} ->
            {ok, Bin} = encode({response, Id, {error, code(internal_error), <<"Internal error">>,
                                               #{<<"reason">> => <<"the result cannot be carried in JSON: ",
                                                                   Why/binary>>}}}),
            Bin
    end.

%% @doc The answer to a message of `Size' bytes past the limit `Max':
%% -32012 with `data: {"maxSize", "size"}', as erlmcp answers it.
-spec too_large(pos_integer(), non_neg_integer()) -> binary().
too_large(Max, Size) ->
    too_large(Max, Size, <<>>).

%% @doc As `too_large/2', answered with the request's id when the message's
%% first bytes `Head' hold it (a top-level `"id"' read as far as it goes):
%% the caller is not left waiting for an answer it cannot match.
-spec too_large(pos_integer(), non_neg_integer(), binary()) -> binary().
too_large(Max, Size, Head) ->
    response(head_id(Head), {error, code(message_too_large), <<"Message too large">>,
                             #{maxSize => Max, size => Size}}).

%% @doc The top-level `"id"' of a JSON object read from its first bytes
%% (a number, a string or null), or `null' when they do not hold it.
-spec head_id(binary()) -> id().
head_id(Head) ->
    case skip_ws(Head) of
        <<${, Rest/binary>> -> head_members(Rest);
        _ -> null
    end.

head_members(Bin) ->
    case skip_ws(Bin) of
        <<$", _/binary>> = B ->
            case json_string(B) of
                {ok, Key, Rest0} ->
                    case skip_ws(Rest0) of
                        <<$:, Rest1/binary>> when Key =:= <<"\"id\"">> ->
                            head_value_id(skip_ws(Rest1));
                        <<$:, Rest1/binary>> ->
                            case skip_value(skip_ws(Rest1)) of
                                {ok, Rest2} ->
                                    case skip_ws(Rest2) of
                                        <<$,, Rest3/binary>> -> head_members(Rest3);
                                        _ -> null
                                    end;
                                error -> null
                            end;
                        _ -> null
                    end;
                error -> null
            end;
        _ -> null
    end.

head_value_id(<<$", _/binary>> = B) ->
    case json_string(B) of
        {ok, Quoted, _} ->
            case decode_json(Quoted) of
                {ok, Id} when is_binary(Id) -> Id;
                _ -> null
            end;
        error -> null
    end;
head_value_id(B) ->
    case re:run(B, "^-?(0|[1-9][0-9]{0,30})(?=[\\s,}])", [{capture, first, binary}]) of
        {match, [N]} -> binary_to_integer(N);
        nomatch -> null
    end.

skip_ws(<<C, Rest/binary>>) when C =:= $\s; C =:= $\t; C =:= $\n; C =:= $\r -> skip_ws(Rest);
skip_ws(B) -> B.

%% A JSON string at the start (quotes included) and what follows it.
json_string(<<$", Rest/binary>>) ->
    json_string(Rest, 1, <<$", Rest/binary>>);
json_string(_) ->
    error.

json_string(<<$\\, _, Rest/binary>>, N, All) -> json_string(Rest, N + 2, All);
json_string(<<$", Rest/binary>>, N, All) -> {ok, binary:part(All, 0, N + 1), Rest};
json_string(<<_, Rest/binary>>, N, All) -> json_string(Rest, N + 1, All);
json_string(<<>>, _, _) -> error.

%% Skips one JSON value (strings, nesting); `error' when the bytes end.
skip_value(<<$", _/binary>> = B) ->
    case json_string(B) of
        {ok, _, Rest} -> {ok, Rest};
        error -> error
    end;
skip_value(<<C, Rest/binary>>) when C =:= ${; C =:= $[ ->
    skip_nested(Rest, 1);
skip_value(B) ->
    case re:run(B, "^[^,}\\]\\s]+", [{capture, first, index}]) of
        {match, [{0, Len}]} when Len < byte_size(B) -> {ok, binary:part(B, Len, byte_size(B) - Len)};
        _ -> error
    end.

skip_nested(Rest, 0) -> {ok, Rest};
skip_nested(<<$", _/binary>> = B, D) ->
    case json_string(B) of
        {ok, _, Rest} -> skip_nested(Rest, D);
        error -> error
    end;
skip_nested(<<C, Rest/binary>>, D) when C =:= ${; C =:= $[ -> skip_nested(Rest, D + 1);
skip_nested(<<C, Rest/binary>>, D) when C =:= $}; C =:= $] -> skip_nested(Rest, D - 1);
skip_nested(<<_, Rest/binary>>, D) -> skip_nested(Rest, D);
skip_nested(<<>>, _) -> error.
