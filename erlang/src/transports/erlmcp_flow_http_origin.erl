%% @private
%% @doc Whose page may call the HTTP endpoints (`/rpc', `/mcp'): the rule
%% against cross-origin requests and DNS rebinding.
%%
%% A request that carries an `Origin' header (a browser's, for a page of
%% another site) is let in only when that origin is in `allowed_origins', or
%% when the listener is on loopback and the origin names a loopback host. On
%% a loopback listener the `Host' header, when given, must name a loopback
%% host too, so that a page cannot reach the node through a name it made
%% resolve to 127.0.0.1. Requests without `Origin' (programs, not browsers)
%% are not concerned.
-module(erlmcp_flow_http_origin).

-export([allowed/2]).

-define(LOCAL_HOSTS, [<<"localhost">>, <<"127.0.0.1">>, <<"[::1]">>, <<"::1">>]).

%% @doc Whether a request with `Headers' may be served by a listener of
%% `Config' (`ip', `allowed_origins').
-spec allowed(#{ip := term(), allowed_origins => [binary()], atom() => term()},
              [{binary(), binary()}]) -> boolean().
allowed(#{ip := Ip} = Config, Headers) ->
    Loopback = lists:member(Ip, [loopback, {127, 0, 0, 1}, {0, 0, 0, 0, 0, 0, 0, 1}]),
    Allowed = maps:get(allowed_origins, Config, []),
    HostOk = case {Loopback, proplists:get_value(<<"host">>, Headers)} of
                 {false, _} -> true;
                 {true, undefined} -> true;
                 {true, Host} -> local(<<"http://", Host/binary>>)
             end,
    OriginOk = case proplists:get_all_values(<<"origin">>, Headers) of
                   [] -> true;
                   [Origin] -> lists:member(Origin, Allowed) orelse (Loopback andalso local(Origin));
                   _ -> false
               end,
    HostOk andalso OriginOk.

local(Url) ->
    lists:member(host(Url), ?LOCAL_HOSTS).

host(Url) ->
    case catch uri_string:parse(Url) of
        #{host := H} when is_binary(H) ->
            case catch string:lowercase(H) of
                L when is_binary(L) -> L;
                _ -> <<>>
            end;
        _ -> <<>>
    end.
