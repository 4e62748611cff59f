#!/usr/bin/env python3
"""An erlmcp_flow agent in Python: joins a node over JSON-RPC 2.0 (TCP) and
serves the tasks routed to it, like an Erlang agent.

Standard library only. Start a node with the TCP transport on, for example

    application:set_env(erlmcp_flow, transports,
                        #{tcp => #{enabled => true, port => 7400}}).

then:

    python3 examples/python/flow_agent.py --port 7400 --id py-1 --capability echo \
        [--delay-ms 0] [--token SECRET] [--fail-rate 0.0]

It registers itself (`flow.register_agent`), answers every `flow.execute_task`
request with `{"echo": <task>, "agent": <id>}` after `--delay-ms`, each task
in a thread of its own so that tasks overlap, drops a task on
`flow.cancel_task`, and when the connection drops it connects and registers
again (after 0.5 s, then up to 5 s between tries). SIGTERM or Ctrl-C ends it.
"""
import argparse
import json
import random
import socket
import sys
import threading
import time


class Agent:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.cancelled = set()
        self.sock = None

    def send(self, message):
        data = (json.dumps(message) + "\n").encode()
        with self.lock:
            if self.sock is not None:
                self.sock.sendall(data)

    def call(self, reader, method, params, id_):
        """A request of our own, and its response (lines before it are served)."""
        self.send({"jsonrpc": "2.0", "id": id_, "method": method, "params": params})
        while True:
            line = reader.readline()
            if not line:
                raise ConnectionError("closed while waiting for " + method)
            msg = json.loads(line)
            if msg.get("id") == id_ and ("result" in msg or "error" in msg):
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self.handle(msg)

    def task(self, id_, params):
        time.sleep(self.args.delay_ms / 1000)
        if id_ in self.cancelled:
            self.cancelled.discard(id_)
            return
        if random.random() < self.args.fail_rate:
            answer = {"jsonrpc": "2.0", "id": id_,
                      "error": {"code": -32000, "message": "simulated failure"}}
        else:
            answer = {"jsonrpc": "2.0", "id": id_,
                      "result": {"echo": params.get("task"), "agent": params.get("agent_id")}}
        try:
            self.send(answer)
        except OSError:
            pass  # the connection went; the node retries the task elsewhere

    def handle(self, msg):
        method = msg.get("method")
        if method == "flow.execute_task" and "id" in msg:
            threading.Thread(target=self.task, args=(msg["id"], msg.get("params", {})),
                             daemon=True).start()
        elif method == "flow.cancel_task":
            self.cancelled.add(msg.get("params", {}).get("id"))

    def session(self):
        a = self.args
        with socket.create_connection((a.host, a.port), timeout=10) as sock:
            sock.settimeout(None)
            self.sock = sock
            reader = sock.makefile("r", encoding="utf-8")
            if a.token:
                self.call(reader, "flow.authenticate", {"token": a.token}, "auth")
            for i, agent_id in enumerate(a.id):
                self.call(reader, "flow.register_agent",
                          {"agent_id": agent_id, "capabilities": a.capability}, f"reg-{i}")
            print(f"registered {', '.join(a.id)} on {a.host}:{a.port}", file=sys.stderr,
                  flush=True)
            for line in reader:
                if line.strip():
                    self.handle(json.loads(line))
        self.sock = None

    def run(self):
        wait = 0.5
        while True:
            try:
                self.session()
                wait = 0.5
            except (OSError, ConnectionError, RuntimeError, ValueError) as e:
                print(f"connection: {e}; again in {wait:.1f} s", file=sys.stderr, flush=True)
            if self.args.once:
                return
            time.sleep(wait)
            wait = min(wait * 2, 5.0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7400)
    p.add_argument("--id", action="append", required=True, help="agent id (repeatable)")
    p.add_argument("--capability", action="append", required=True, help="repeatable")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--token")
    p.add_argument("--once", action="store_true", help="do not reconnect")
    try:
        Agent(p.parse_args()).run()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
