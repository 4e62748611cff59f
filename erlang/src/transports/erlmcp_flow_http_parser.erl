%% @private
%% @doc HTTP/1.1 request framing as RFC 9112 gives it, strictly: a pure
%% parser over the bytes of one connection, with its limits. Every HTTP
%% listener (JSON-RPC's `/rpc', MCP's `/mcp', `/metrics', the status page)
%% reads its requests through it.
%%
%% What it refuses, and with which status (the connection closes after the
%% answer):
%%
%% <ul>
%% <li>400: a request line that is not `method SP target SP HTTP/x.y'
%%   (single spaces, a token method, a target of visible ASCII); a line ended
%%   by a bare LF or holding a bare CR; a header line folded (obs-fold) or with
%%   white space before its colon, a name that is not a token, a value with a
%%   control character; an HTTP/1.1 request without exactly one `Host'; a
%%   `Content-Length' that is not digits, or two that differ; both
%%   `Transfer-Encoding' and `Content-Length'; `Transfer-Encoding' in
%%   HTTP/1.0, without `chunked' last, or with `chunked' twice; a chunk size
%%   that is not hex, a chunk not followed by CRLF, a bad trailer line;</li>
%% <li>413: a body (its length, or its chunks added up) past `max_body';</li>
%% <li>414: a request line past `max_line' bytes;</li>
%% <li>417: an `Expect' other than `100-continue';</li>
%% <li>431: a header line past `max_line', more than `max_headers' fields, or
%%   a header section past `max_header_bytes';</li>
%% <li>501: a transfer coding other than `chunked';</li>
%% <li>505: an HTTP major version other than 1.</li>
%% </ul>
%%
%% Bytes after a request's body stay for the next request (pipelining).
%% Empty lines before a request line are skipped. Known methods come out as
%% the atoms OTP's `http_bin' packets use (`` 'GET' '', `` 'POST' '', ...),
%% others as binaries; header names in lower case, in their order.
-module(erlmcp_flow_http_parser).

-export([new/1]).
-export([parse/2]).
-export([buffered/1]).
-export([started/1]).
-export([lowercase/1]).

-export_type([parser/0, request/0, limits/0, result/0]).

-type limits() :: #{max_line => pos_integer(), max_headers => pos_integer(),
                    max_header_bytes => pos_integer(), max_body => non_neg_integer()}.
-type request() :: #{method := atom() | binary(), target := binary(), path := binary(),
                     query := binary(), version := {1, 0 | 1},
                     headers := [{binary(), binary()}], body := binary(),
                     keep_alive := boolean()}.
-type result() :: {request, request(), parser()}
                | {continue, parser()}
                | {more, parser()}
                | {error, 400 | 413 | 414 | 417 | 431 | 501 | 505, binary()}.

-define(MAX_LINE, 8192).
-define(MAX_HEADERS, 64).
-define(MAX_HEADER_BYTES, 65536).
-define(MAX_BODY, 1048576).
%% A chunk-size line (size and extensions) at most this long.
-define(MAX_CHUNK_LINE, 1024).
%% Empty lines before a request line at most.
-define(MAX_EMPTY_LINES, 8).

-record(p, {buf = <<>> :: binary(),
            %% bytes of `buf' already searched for a line end
            scanned = 0 :: non_neg_integer(),
            phase = start :: start | line | headers | body | chunk_size | chunk_data
                           | chunk_crlf | trailers,
            empty = 0 :: non_neg_integer(),
            req :: map() | undefined,
            header_bytes = 0 :: non_neg_integer(),
            %% body: bytes still owed (length or current chunk); body read so far
            owed = 0 :: non_neg_integer(),
            body = [] :: iodata(),
            body_size = 0 :: non_neg_integer(),
            %% 100-continue asked and not yet given
            expect = false :: boolean(),
            limits :: #{atom() => non_neg_integer()}}).

-opaque parser() :: #p{}.

%% @doc A parser for a new connection.
-spec new(limits()) -> parser().
new(Limits) ->
    #p{limits = maps:merge(#{max_line => ?MAX_LINE, max_headers => ?MAX_HEADERS,
                             max_header_bytes => ?MAX_HEADER_BYTES, max_body => ?MAX_BODY},
                           Limits)}.

%% @doc The bytes held and not yet part of a request.
-spec buffered(parser()) -> non_neg_integer().
buffered(#p{buf = B}) ->
    byte_size(B).

%% @doc Whether a request has begun (a byte of it arrived) and is not whole.
-spec started(parser()) -> boolean().
started(#p{phase = Phase, buf = <<>>}) when Phase =:= start; Phase =:= line -> false;
started(#p{}) -> true.

%% @doc Takes `Data' (the next bytes read, possibly empty) and returns the
%% next whole request, `more' when it needs more bytes, `continue' when the
%% client asked `Expect: 100-continue' and waits for that answer before its
%% body (call `parse(<<>>, P)' again after sending it), or the error.
-spec parse(binary(), parser()) -> result().
parse(Data, #p{buf = Buf} = P) ->
    step(P#p{buf = <<Buf/binary, Data/binary>>}).

%%====================================================================
%% The phases
%%====================================================================

step(#p{phase = start} = P) ->
    step(P#p{phase = line, req = undefined, header_bytes = 0, body = [], body_size = 0,
             owed = 0, expect = false, empty = 0});
step(#p{phase = line, limits = #{max_line := Max}} = P) ->
    case line(P, Max) of
        {ok, <<>>, P1} when P#p.empty < ?MAX_EMPTY_LINES ->
            step(P1#p{empty = P#p.empty + 1});
        {ok, <<>>, _} ->
            {error, 400, <<"empty lines instead of a request">>};
        {ok, Line, P1} ->
            case request_line(Line) of
                {ok, Req} -> step(P1#p{phase = headers, req = Req#{headers => []}});
                {error, _, _} = E -> E
            end;
        {more, _} = More ->
            More;
        too_long ->
            {error, 414, <<"request line too long">>};
        {error, Why} ->
            {error, 400, Why}
    end;
step(#p{phase = headers, limits = #{max_line := Max, max_headers := MaxN,
                                     max_header_bytes := MaxBytes}} = P) ->
    case line(P, Max) of
        {ok, <<>>, P1} ->
            framing(P1);
        {ok, _, #p{header_bytes = Bytes}} when Bytes > MaxBytes ->
            {error, 431, <<"header section too large">>};
        {ok, Line, #p{req = #{headers := Hs} = Req} = P1} ->
            case length(Hs) >= MaxN of
                true ->
                    {error, 431, <<"too many header fields">>};
                false ->
                    case field(Line) of
                        {ok, Field} ->
                            step(P1#p{req = Req#{headers := [Field | Hs]},
                                      header_bytes = P1#p.header_bytes + byte_size(Line) + 2});
                        {error, Why} ->
                            {error, 400, Why}
                    end
            end;
        {more, _} = More ->
            More;
        too_long ->
            {error, 431, <<"header line too long">>};
        {error, Why} ->
            {error, 400, Why}
    end;
step(#p{expect = true} = P) ->
    %% the client waits for this before it sends its body
    {continue, P#p{expect = false}};
step(#p{phase = body, buf = Buf, owed = N} = P) ->
    case Buf of
        <<Chunk:N/binary, Rest/binary>> ->
            done(P#p{buf = Rest, scanned = 0, body = [P#p.body, Chunk]});
        _ ->
            {more, P}
    end;
step(#p{phase = chunk_size} = P) ->
    case line(P, ?MAX_CHUNK_LINE) of
        {ok, Line, P1} ->
            case chunk_size(Line) of
                {ok, 0} ->
                    step(P1#p{phase = trailers});
                {ok, Size} when P#p.body_size + Size > map_get(max_body, P#p.limits) ->
                    {error, 413, <<"body too large">>};
                {ok, Size} ->
                    step(P1#p{phase = chunk_data, owed = Size, body_size = P#p.body_size + Size});
                error ->
                    {error, 400, <<"bad chunk size">>}
            end;
        {more, _} = More ->
            More;
        too_long ->
            {error, 400, <<"chunk size line too long">>};
        {error, Why} ->
            {error, 400, Why}
    end;
step(#p{phase = chunk_data, buf = Buf, owed = N} = P) ->
    case Buf of
        <<Chunk:N/binary, Rest/binary>> ->
            step(P#p{phase = chunk_crlf, buf = Rest, scanned = 0, body = [P#p.body, Chunk]});
        _ ->
            {more, P}
    end;
step(#p{phase = chunk_crlf, buf = Buf} = P) ->
    case Buf of
        <<"\r\n", Rest/binary>> -> step(P#p{phase = chunk_size, buf = Rest, scanned = 0});
        <<"\r">> -> {more, P};
        <<>> -> {more, P};
        _ -> {error, 400, <<"chunk data not followed by CRLF">>}
    end;
step(#p{phase = trailers, limits = #{max_line := Max, max_headers := MaxN}} = P) ->
    case line(P, Max) of
        {ok, <<>>, P1} ->
            done(P1);
        {ok, Line, #p{req = #{headers := Hs}} = P1} ->
            %% trailer fields are checked as fields are, then dropped: none
            %% of them may change how the request is framed or routed
            case field(Line) of
                {ok, _} when length(Hs) >= MaxN -> {error, 431, <<"too many trailer fields">>};
                {ok, _} -> step(P1#p{req = (P1#p.req)#{headers := [{<<>>, <<>>} | Hs]}});
                {error, Why} -> {error, 400, Why}
            end;
        {more, _} = More ->
            More;
        too_long ->
            {error, 431, <<"trailer line too long">>};
        {error, Why} ->
            {error, 400, Why}
    end.

%% The request whole: handed out, the parser ready for the next one.
done(#p{req = #{headers := Hs} = Req, body = Body} = P) ->
    Headers = [H || {N, _} = H <- lists:reverse(Hs), N =/= <<>>],
    {request, Req#{headers := Headers, body => iolist_to_binary(Body),
                   keep_alive => keep_alive(maps:get(version, Req), Headers)},
     P#p{phase = start, req = undefined, body = []}}.

%% After the header section: how the body is framed (RFC 9112, 6.3).
framing(#p{req = #{version := V, headers := Hs0} = Req, limits = #{max_body := MaxBody}} = P) ->
    Hs = lists:reverse(Hs0),
    TE = values(<<"transfer-encoding">>, Hs),
    CL = values(<<"content-length">>, Hs),
    EmptyFraming = (TE =:= [] andalso lists:keymember(<<"transfer-encoding">>, 1, Hs))
        orelse (CL =:= [] andalso lists:keymember(<<"content-length">>, 1, Hs)),
    Hosts = [H || {<<"host">>, H} <- Hs],
    Expect = [lowercase(E) || {<<"expect">>, E} <- Hs],
    Req1 = Req#{headers := Hs0},
    if
        EmptyFraming ->
            {error, 400, <<"an empty Transfer-Encoding or Content-Length">>};
        V =:= {1, 1}, length(Hosts) =/= 1 ->
            {error, 400, <<"an HTTP/1.1 request needs exactly one Host">>};
        length(Hosts) > 1 ->
            {error, 400, <<"more than one Host">>};
        TE =/= [], CL =/= [] ->
            {error, 400, <<"both Transfer-Encoding and Content-Length">>};
        TE =/= [], V =:= {1, 0} ->
            {error, 400, <<"Transfer-Encoding in an HTTP/1.0 request">>};
        Expect =/= [], Expect =/= [<<"100-continue">>] ->
            {error, 417, <<"only Expect: 100-continue is understood">>};
        TE =/= [] ->
            Codings = [lowercase(C) || C <- TE],
            case {lists:last(Codings), length([C || C <- Codings, C =:= <<"chunked">>])} of
                {<<"chunked">>, 1} when length(Codings) =:= 1 ->
                    step(P#p{phase = chunk_size, req = Req1,
                             expect = Expect =/= [] andalso V =:= {1, 1}});
                {<<"chunked">>, 1} ->
                    {error, 501, <<"only the chunked transfer coding is implemented">>};
                _ ->
                    {error, 400, <<"chunked must be the last transfer coding, once">>}
            end;
        CL =/= [] ->
            case lists:usort(CL) of
                [Len] ->
                    case digits(Len) of
                        {ok, N} when N > MaxBody ->
                            {error, 413, <<"body too large">>};
                        {ok, 0} ->
                            done(P#p{req = Req1});
                        {ok, N} ->
                            step(P#p{phase = body, owed = N, req = Req1,
                                     expect = Expect =/= [] andalso V =:= {1, 1}
                                         andalso byte_size(P#p.buf) < N});
                        too_long ->
                            {error, 413, <<"body too large">>};
                        error ->
                            {error, 400, <<"Content-Length is not a number">>}
                    end;
                _ ->
                    {error, 400, <<"Content-Length values differ">>}
            end;
        true ->
            done(P#p{req = Req1})
    end.

%%====================================================================
%% Lines and their parts
%%====================================================================

%% The next line (without its CRLF) and the parser past it; `more' while
%% none has ended and `Max' is not passed; a bare LF or CR is an error.
line(#p{buf = Buf, scanned = Scanned} = P, Max) ->
    Size = byte_size(Buf),
    From = max(Scanned - 1, 0),
    case binary:match(Buf, <<"\n">>, [{scope, {From, Size - From}}]) of
        nomatch when Size > Max ->
            too_long;
        nomatch ->
            {more, P#p{scanned = Size}};
        {At, 1} when At > Max ->
            too_long;
        {0, 1} ->
            {error, <<"bare LF">>};
        {At, 1} ->
            case binary:at(Buf, At - 1) of
                $\r ->
                    Line = binary:part(Buf, 0, At - 1),
                    case binary:match(Line, <<"\r">>) of
                        nomatch ->
                            Rest = binary:part(Buf, At + 1, Size - At - 1),
                            {ok, Line, P#p{buf = Rest, scanned = 0}};
                        _ ->
                            {error, <<"bare CR">>}
                    end;
                _ ->
                    {error, <<"bare LF">>}
            end
    end.

request_line(Line) ->
    case binary:split(Line, <<" ">>, [global]) of
        [Method, Target, Version] when Method =/= <<>>, Target =/= <<>> ->
            case {token(Method), target(Target), version(Version)} of
                {true, true, {ok, V}} ->
                    {Path, Query} = case binary:split(Target, <<"?">>) of
                                        [Pa, Q] -> {Pa, Q};
                                        [Pa] -> {Pa, <<>>}
                                    end,
                    {ok, #{method => method(Method), target => Target, path => path(Path),
                           query => Query, version => V}};
                {_, _, {error, 505}} ->
                    {error, 505, <<"HTTP version not supported">>};
                _ ->
                    {error, 400, <<"bad request line">>}
            end;
        _ ->
            {error, 400, <<"bad request line">>}
    end.

%% An absolute-form target's path (a proxy's form, which a server must
%% accept): the part after the authority.
path(<<"http://", Rest/binary>>) -> authority_path(Rest);
path(<<"https://", Rest/binary>>) -> authority_path(Rest);
path(Path) -> Path.

authority_path(Rest) ->
    case binary:match(Rest, <<"/">>) of
        {At, 1} -> binary:part(Rest, At, byte_size(Rest) - At);
        nomatch -> <<"/">>
    end.

version(<<"HTTP/1.1">>) -> {ok, {1, 1}};
version(<<"HTTP/1.0">>) -> {ok, {1, 0}};
version(<<"HTTP/1.", M>>) when M >= $0, M =< $9 -> {ok, {1, 1}};
version(<<"HTTP/", Major, ".", Minor>>) when Major >= $0, Major =< $9, Minor >= $0, Minor =< $9 ->
    {error, 505};
version(_) -> error.

field(<<C, _/binary>>) when C =:= $\s; C =:= $\t ->
    {error, <<"obsolete line folding">>};
field(Line) ->
    case binary:split(Line, <<":">>) of
        [Name, Value0] when Name =/= <<>> ->
            case token(Name) of
                true ->
                    Value = ows_trim(Value0),
                    case field_value(Value) of
                        true -> {ok, {lowercase(Name), Value}};
                        false -> {error, <<"control character in a field value">>}
                    end;
                false ->
                    {error, <<"bad field name">>}
            end;
        _ ->
            {error, <<"bad header line">>}
    end.

%% The comma-separated elements of every field `Name', trimmed, empty ones
%% left out (RFC 9110, 5.6.1).
values(Name, Headers) ->
    [E || {N, V} <- Headers, N =:= Name,
          E0 <- binary:split(V, <<",">>, [global]),
          E <- [ows_trim(E0)], E =/= <<>>].

digits(<<>>) -> error;
digits(B) when byte_size(B) > 18 ->
    case all_digits(B) of
        true -> too_long;
        false -> error
    end;
digits(B) ->
    case all_digits(B) of
        true -> {ok, binary_to_integer(B)};
        false -> error
    end.

all_digits(B) -> lists:all(fun(C) -> C >= $0 andalso C =< $9 end, binary_to_list(B)).

%% chunk-size [ ; chunk-ext ]: hex digits; extensions are passed by.
chunk_size(Line) ->
    Size = case binary:split(Line, <<";">>) of
               [S, _Ext] -> ows_trim(S);
               [S] -> S
           end,
    case Size =/= <<>> andalso byte_size(Size) =< 15 andalso
        lists:all(fun hex/1, binary_to_list(Size)) of
        true -> {ok, binary_to_integer(Size, 16)};
        false -> error
    end.

hex(C) -> (C >= $0 andalso C =< $9) orelse (C >= $a andalso C =< $f) orelse (C >= $A andalso C =< $F).

token(B) -> B =/= <<>> andalso lists:all(fun tchar/1, binary_to_list(B)).

tchar(C) when C >= $a, C =< $z; C >= $A, C =< $Z; C >= $0, C =< $9 -> true;
tchar(C) -> lists:member(C, "!#$%&'*+-.^_`|~").

%% visible ASCII, no space
target(B) -> lists:all(fun(C) -> C > 16#20 andalso C < 16#7F end, binary_to_list(B)).

%% field-value: VCHAR, obs-text, SP and HTAB inside
field_value(B) -> lists:all(fun(C) -> C =:= $\t orelse (C >= 16#20 andalso C =/= 16#7F) end,
                            binary_to_list(B)).

%% Bytes, not characters: a value may hold obs-text that is not UTF-8
%% (string:trim/3 raises on it).
ows_trim(B) -> ows_trim_tail(ows_trim_head(B)).

ows_trim_head(<<C, R/binary>>) when C =:= $\s; C =:= $\t -> ows_trim_head(R);
ows_trim_head(B) -> B.

ows_trim_tail(<<>>) -> <<>>;
ows_trim_tail(B) ->
    case binary:last(B) of
        C when C =:= $\s; C =:= $\t -> ows_trim_tail(binary:part(B, 0, byte_size(B) - 1));
        _ -> B
    end.

%% @doc ASCII letters in lower case, byte by byte: header names and the
%% tokens of values (a value need not be UTF-8; string:lowercase/1 raises on
%% what is not).
-spec lowercase(binary()) -> binary().
lowercase(B) -> << <<(if C >= $A, C =< $Z -> C + 32; true -> C end)>> || <<C>> <= B >>.

method(<<"GET">>) -> 'GET';
method(<<"POST">>) -> 'POST';
method(<<"HEAD">>) -> 'HEAD';
method(<<"PUT">>) -> 'PUT';
method(<<"DELETE">>) -> 'DELETE';
method(<<"OPTIONS">>) -> 'OPTIONS';
method(<<"TRACE">>) -> 'TRACE';
method(Other) -> Other.

keep_alive({1, 1}, Headers) -> not lists:member(<<"close">>, connection(Headers));
keep_alive({1, 0}, Headers) -> lists:member(<<"keep-alive">>, connection(Headers)).

connection(Headers) ->
    [lowercase(T) || T <- values(<<"connection">>, Headers)].
