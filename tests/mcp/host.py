"""An MCP host built on the official Python SDK (PyPI `mcp`): it connects to
erlmcp_flow over stdio (launching `bin/erlmcp-flow stdio --mcp`) or over
Streamable HTTP, lists the tools and calls some, and prints one JSON line
with what it saw. Used by erlmcp_flow_mcp_SUITE.

    python host.py --http http://127.0.0.1:7401/mcp --call echo '{"message":"hi"}'
    python host.py --stdio bin/erlmcp-flow stdio --mcp --config F --call ...
"""
import argparse
import asyncio
import json
import sys
import time

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client


async def session_run(read, write, calls, repeat):
    async with ClientSession(read, write) as session:
        init = await session.initialize()
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
                r = await session.call_tool(name, args)
                text = " ".join(c.text for c in r.content if getattr(c, "type", "") == "text")
                meta = r.meta if hasattr(r, "meta") else None
                is_error = getattr(r, "is_error", None)
                if is_error is None:
                    is_error = getattr(r, "isError", False)
                results.append({"tool": name, "isError": bool(is_error), "text": text,
                                "meta": meta})
        elapsed = time.monotonic() - t0
        return {"elapsed_s": elapsed, "calls": len(results),
                "protocolVersion": getattr(init, "protocol_version", None) or getattr(init, "protocolVersion", None),
                "server": (getattr(init, "server_info", None) or getattr(init, "serverInfo")).name,
                "tools": tools, "results": results}


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--http")
    p.add_argument("--stdio", nargs=argparse.REMAINDER)
    p.add_argument("--call", nargs=2, action="append", default=[], metavar=("TOOL", "ARGS"))
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--quiet", action="store_true", help="leave the results out of the output")
    a = p.parse_args()
    calls = [(name, json.loads(args)) for name, args in a.call]
    if a.http:
        async with streamable_http_client(a.http) as streams:
            out = await session_run(streams[0], streams[1], calls, a.repeat)
    else:
        cmd, *args = a.stdio
        # the calls follow the command: split them out of the remainder
        calls, rest, i = [], [], 0
        while i < len(args):
            if args[i] == "--call":
                calls.append((args[i + 1], json.loads(args[i + 2])))
                i += 3
            else:
                rest.append(args[i])
                i += 1
        params = StdioServerParameters(command=cmd, args=rest)
        async with stdio_client(params) as (read, write):
            out = await session_run(read, write, calls, a.repeat)
    if a.quiet:
        out["results"] = out["results"][-1:]
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    asyncio.run(main())
