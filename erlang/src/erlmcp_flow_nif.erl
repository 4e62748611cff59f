%% @private
%% @doc The raw NIF of erlmcp_flow, loaded from `priv/erlmcp_flow_nif.so'.
%%
%% Only the application's own modules call these functions; they validate
%% arguments first, but every function here also refuses garbage itself with
%% `{error, {badarg, What}}' and never crashes the node.
-module(erlmcp_flow_nif).

-on_load(init/0).

%% API
-export([router_new/1]).
-export([clock_advance/2]).
-export([agent_insert/5]).
-export([agent_remove/2]).
-export([router_stats/1]).
-export([agent_stats/2]).
-export([decide/3]).
-export([complete/2]).
-export([generate_trace_id/0]).
-export([generate_span_id/0]).

-export_type([router/0, lease/0, outcome/0]).

-nifs([router_new/1, clock_advance/2, agent_insert/5, agent_remove/2, router_stats/1,
       agent_stats/2, decide/3, complete/2, generate_trace_id/0, generate_span_id/0]).

-type router() :: reference().
-type lease() :: reference().
-type outcome() :: ok | error | timeout | down | abandoned.
-type badarg() :: {error, {badarg, atom()}}.

-spec init() -> ok | {error, term()}.
init() ->
    erlang:load_nif(filename:join(priv_dir(), "erlmcp_flow_nif"), 0).

priv_dir() ->
    case code:priv_dir(erlmcp_flow) of
        {error, bad_name} ->
            %% Not loaded as an application (e.g. a bare -pa path): look
            %% beside the ebin directory this module came from.
            filename:join(filename:dirname(filename:dirname(code:which(?MODULE))), "priv");
        Dir ->
            Dir
    end.

-spec router_new(#{clock => system | manual}) -> {ok, router()} | badarg().
router_new(_Opts) -> erlang:nif_error(nif_not_loaded).

-spec clock_advance(router(), non_neg_integer()) ->
          {ok, non_neg_integer()} | {error, system_clock} | badarg().
clock_advance(_Router, _Us) -> erlang:nif_error(nif_not_loaded).

-spec agent_insert(router(), binary(), pid(), [binary()], agent | swarm) ->
          ok | {error, already_registered} | badarg().
agent_insert(_Router, _Id, _Pid, _Caps, _Kind) -> erlang:nif_error(nif_not_loaded).

-spec agent_remove(router(), binary()) -> ok | {error, not_found} | badarg().
agent_remove(_Router, _Id) -> erlang:nif_error(nif_not_loaded).

-spec router_stats(router()) ->
          {ok, #{agents := non_neg_integer(), in_flight := non_neg_integer()}} | badarg().
router_stats(_Router) -> erlang:nif_error(nif_not_loaded).

-spec agent_stats(router(), binary()) -> {ok, map()} | {error, not_found} | badarg().
agent_stats(_Router, _Id) -> erlang:nif_error(nif_not_loaded).

-spec decide(router(), [binary()], atom()) ->
          {ok, binary(), pid(), lease()} | {error, no_agents_available} | badarg().
decide(_Router, _Caps, _Strategy) -> erlang:nif_error(nif_not_loaded).

-spec complete(lease(), outcome()) ->
          {ok, non_neg_integer()} | {error, already_settled} | badarg().
complete(_Lease, _Outcome) -> erlang:nif_error(nif_not_loaded).

-spec generate_trace_id() -> binary().
generate_trace_id() -> erlang:nif_error(nif_not_loaded).

-spec generate_span_id() -> binary().
generate_span_id() -> erlang:nif_error(nif_not_loaded).
