"""An MCP host built on the official Python SDK (PyPI `mcp`): it connects to
erlmcp_flow over stdio (launching `bin/erlmcp-flow stdio --mcp`) or over
Streamable HTTP, lists the tools and calls some, and prints one JSON line
with what it saw. Used by erlmcp_flow_mcp_SUITE.

    python host.py --http http://127.0.0.1:7401/mcp --call echo '{"message":"hi"}'
    python host.py --stdio bin/erlmcp-flow stdio --mcp --config F --call ...

As a host it answers what a server asks during a call (sampling: a canned
message; elicitation: accept with a canned answer; roots: one root) and
counts the progress notifications of each call and the log messages it gets
(after --log-level LEVEL); all of it is in the JSON line.
"""
import argparse
import asyncio
import json
import sys
import time

from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client


SEEN = {"sampling": [], "elicitation": [], "roots": 0, "logs": []}


async def on_sampling(_context, params):
    SEEN["sampling"].append(params.messages[0].content.text if params.messages else "")
    return types.CreateMessageResult(role="assistant", model="host-model", stopReason="endTurn",
                                     content=types.TextContent(type="text", text="sampled by the host"))


async def on_elicitation(_context, params):
    SEEN["elicitation"].append(params.message)
    return types.ElicitResult(action="accept", content={"color": "blue", "name": "host"})


async def on_roots(_context):
    SEEN["roots"] += 1
    return types.ListRootsResult(roots=[types.Root(uri="file:///tmp/host-root", name="host-root")])


async def on_log(params):
    SEEN["logs"].append({"level": params.level, "data": params.data})


async def session_run(read, write, calls, repeat, log_level=None):
    async with ClientSession(read, write, sampling_callback=on_sampling,
                             elicitation_callback=on_elicitation, list_roots_callback=on_roots,
                             logging_callback=on_log) as session:
        init = await session.initialize()
        if log_level:
            await session.set_logging_level(log_level)
        tools = []
        cursor = None
        while True:
            page = await session.list_tools(cursor=cursor) if cursor else await session.list_tools()
            tools += [t.name for t in page.tools]
            cursor = getattr(page, "next_cursor", None) or getattr(page, "nextCursor", None)
            if not cursor:
                break
        results = []
        t0 = time.monotonic()
        for name, args in calls:
            for _ in range(repeat):
                progress = []

                async def on_progress(p, total, message, progress=progress):
                    progress.append(p)
                try:
                    r = await session.call_tool(name, args, progress_callback=on_progress)
                except Exception as e:  # the call failed: said, and the session goes on
                    results.append({"tool": name, "exception": str(e)})
                    continue
                text = " ".join(c.text for c in r.content if getattr(c, "type", "") == "text")
                meta = r.meta if hasattr(r, "meta") else None
                is_error = getattr(r, "is_error", None)
                if is_error is None:
                    is_error = getattr(r, "isError", False)
                results.append({"tool": name, "isError": bool(is_error), "text": text,
                                "meta": meta, "progress": progress})
        elapsed = time.monotonic() - t0
        return {"elapsed_s": elapsed, "calls": len(results),
                "protocolVersion": getattr(init, "protocol_version", None) or getattr(init, "protocolVersion", None),
                "server": (getattr(init, "server_info", None) or getattr(init, "serverInfo")).name,
                "tools": tools, "results": results, "sampling": SEEN["sampling"],
                "elicitation": SEEN["elicitation"], "roots": SEEN["roots"], "logs": SEEN["logs"]}


def arguments(text):
    """A call's arguments: JSON, or `@big:N` for {"message": N bytes} (too
    large for a command line)."""
    if text.startswith("@big:"):
        return {"message": "x" * int(text[5:])}
    return json.loads(text)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--http")
    p.add_argument("--stdio", nargs=argparse.REMAINDER)
    p.add_argument("--call", nargs=2, action="append", default=[], metavar=("TOOL", "ARGS"))
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--quiet", action="store_true", help="leave the results out of the output")
    p.add_argument("--log-level", help="logging/setLevel before the calls")
    a = p.parse_args()
    calls = [(name, arguments(args)) for name, args in a.call]
    if a.http:
        async with streamable_http_client(a.http) as streams:
            out = await session_run(streams[0], streams[1], calls, a.repeat, a.log_level)
    else:
        cmd, *args = a.stdio
        # the calls follow the command: split them out of the remainder
        calls, rest, i = [], [], 0
        while i < len(args):
            if args[i] == "--call":
                calls.append((args[i + 1], arguments(args[i + 2])))
                i += 3
            elif args[i] == "--log-level":
                a.log_level = args[i + 1]
                i += 2
            else:
                rest.append(args[i])
                i += 1
        params = StdioServerParameters(command=cmd, args=rest)
        async with stdio_client(params) as (read, write):
            out = await session_run(read, write, calls, a.repeat, a.log_level)
    if a.quiet:
        out["results"] = out["results"][-1:]
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    asyncio.run(main())
