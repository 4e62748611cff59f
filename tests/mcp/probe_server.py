"""An MCP server over stdio (standard library only) that shows what its client
does: `sleep` answers after `seconds` unless cancelled, and every
`notifications/cancelled` it receives is appended to the file given as the
first argument; `grow` adds the tool `extra` and sends
`notifications/tools/list_changed`. erlmcp_flow_mcp_SUITE checks with it that a
timed-out call is cancelled at the server and that a server's changed tool list
reaches the router.
"""
import json
import sys
import threading
import time

LOG = sys.argv[1]
lock = threading.Lock()
tools = ["sleep", "grow"]
cancelled = set()


def send(msg):
    with lock:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()


def listing():
    return [{"name": n, "inputSchema": {"type": "object"}} for n in tools]


def sleep_then_answer(mid, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if mid in cancelled:
            return  # a cancelled request is not answered
        time.sleep(0.01)
    send({"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": "slept"}]}})


def main():
    for line in sys.stdin:
        msg = json.loads(line)
        method, mid = msg.get("method"), msg.get("id")
        if method == "notifications/cancelled":
            rid = msg["params"]["requestId"]
            cancelled.add(rid)
            with open(LOG, "a") as f:
                f.write("cancelled %s\n" % rid)
        elif method == "initialize":
            send({"jsonrpc": "2.0", "id": mid, "result": {
                "protocolVersion": msg["params"]["protocolVersion"],
                "capabilities": {"tools": {"listChanged": True}},
                "serverInfo": {"name": "probe", "version": "1"}}})
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": mid, "result": {"tools": listing()}})
        elif method == "tools/call" and msg["params"]["name"] == "sleep":
            seconds = msg["params"].get("arguments", {}).get("seconds", 5)
            threading.Thread(target=sleep_then_answer, args=(mid, seconds), daemon=True).start()
        elif method == "tools/call" and msg["params"]["name"] == "grow":
            if "extra" not in tools:
                tools.append("extra")
            send({"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": "grown"}]}})
            send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        elif mid is not None:
            send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": "Method not found"}})


if __name__ == "__main__":
    main()
