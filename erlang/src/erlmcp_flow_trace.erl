%% @private
%% @doc Trace contexts handed to agents with each task: a W3C trace id (a
%% UUID v4 as 32 lowercase hex digits), a span id (16 hex digits) and the
%% trace flags, all generated in the Rust core.
-module(erlmcp_flow_trace).

%% API
-export([new_context/0]).

-export_type([context/0]).

-type context() :: #{trace_id := binary(), span_id := binary(), trace_flags := 0..255}.

%% @doc A new root context, sampled.
-spec new_context() -> context().
new_context() ->
    #{trace_id => erlmcp_flow_nif:generate_trace_id(),
      span_id => erlmcp_flow_nif:generate_span_id(),
      trace_flags => 1}.
