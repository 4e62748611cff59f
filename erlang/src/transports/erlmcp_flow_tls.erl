%% @private
%% @doc The `tls' setting of a listener (`transports.tcp', `transports.http',
%% `metrics') as OTP's `ssl' takes it:
%%
%% `#{certfile := Path, keyfile := Path, cacertfile => Path,
%%    client_certs => none | optional | required, versions => ['tlsv1.3' | 'tlsv1.2']}'
%%
%% `client_certs' (default `none'): with `optional' or `required' the
%% server asks the client for a certificate and verifies it against
%% `cacertfile' (which is then required); with `required' a client without
%% one fails the handshake: the certificate authenticates the client (a
%% token, when one is also set, is asked too). TLS 1.3 and 1.2 only. The
%% configuration checks the setting's shape (`erlmcp_flow_config').
-module(erlmcp_flow_tls).

-export([server_opts/1]).

-export_type([config/0]).

-type config() :: #{certfile := file:filename_all(), keyfile := file:filename_all(),
                    cacertfile => file:filename_all(),
                    client_certs => none | optional | required,
                    versions => ['tlsv1.3' | 'tlsv1.2']}.

%% @doc ssl's server options for a valid `tls' setting, `undefined' for none.
-spec server_opts(config() | undefined) -> [ssl:tls_server_option()] | undefined.
server_opts(undefined) ->
    undefined;
server_opts(#{certfile := C, keyfile := K} = Tls) ->
    Verify = case maps:get(client_certs, Tls, none) of
                 none -> [{verify, verify_none}];
                 optional -> [{verify, verify_peer}, {fail_if_no_peer_cert, false}];
                 required -> [{verify, verify_peer}, {fail_if_no_peer_cert, true}]
             end,
    [{certfile, to_list(C)}, {keyfile, to_list(K)},
     {versions, maps:get(versions, Tls, ['tlsv1.3', 'tlsv1.2'])}
     | [{cacertfile, to_list(F)} || F <- [maps:get(cacertfile, Tls, undefined)], F =/= undefined]]
        ++ Verify.

to_list(B) when is_binary(B) -> binary_to_list(B);
to_list(L) -> L.
