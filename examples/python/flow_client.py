#!/usr/bin/env python3
"""Routes tasks through an erlmcp_flow node over JSON-RPC 2.0 (HTTP or TCP).

Standard library only. Start a node with the HTTP transport on, for example
in `rebar3 shell` with

    application:set_env(erlmcp_flow, transports,
                        #{http => #{enabled => true, port => 7401}}).

before the application starts, then:

    python3 examples/python/flow_client.py --port 7401 --capability echo \
        --task '{"input": "hello"}' [--count 10] [--token SECRET] [--batch]

With `--tcp` the tasks go over one TCP connection (newline-delimited JSON),
all sent before the first answer is read (pipelined; answers come back in
any order, matched by id). Each task goes out as `flow.route_task`; the
answer (the agent's result and
which agent gave it, the trace and span ids, the latency) is printed as one
JSON line. `--batch` sends the tasks as one JSON-RPC batch. Exit status 0
when every task was answered with a result, 1 otherwise.
"""
import argparse
import json
import socket
import sys
import urllib.error
import urllib.request


def rpc(url, payload, token=None, traceparent=None):
    """POSTs one JSON-RPC message (or batch); returns the decoded answer or None."""
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = "Bearer " + token
    if traceparent:
        headers["traceparent"] = traceparent
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers=headers,
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = resp.read()
    except urllib.error.HTTPError as e:
        raise SystemExit(f"HTTP {e.code}: {e.read().decode(errors='replace')}")
    return json.loads(body) if body else None


def over_tcp(host, port, requests, token=None):
    """Sends every request on one connection, then reads their answers."""
    with socket.create_connection((host, port), timeout=30) as sock:
        reader = sock.makefile("r", encoding="utf-8")
        if token:
            sock.sendall((json.dumps({"jsonrpc": "2.0", "id": "auth", "method": "flow.authenticate",
                                      "params": {"token": token}}) + "\n").encode())
            if "result" not in json.loads(reader.readline()):
                raise SystemExit("authentication refused")
        sock.sendall("".join(json.dumps(r) + "\n" for r in requests).encode())
        answers = []
        while len(answers) < len(requests):
            line = reader.readline()
            if not line:
                break
            answers.append(json.loads(line))
        return answers


def route_task(i, task, capability, strategy):
    requirements = {"capabilities": [capability]}
    if strategy:
        requirements["strategy"] = strategy
    return {"jsonrpc": "2.0", "id": i, "method": "flow.route_task",
            "params": {"task": task, "requirements": requirements}}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7401)
    p.add_argument("--capability", default="echo")
    p.add_argument("--task", default='{"input": "hello"}', help="the task, a JSON object")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--strategy")
    p.add_argument("--token")
    p.add_argument("--traceparent")
    p.add_argument("--batch", action="store_true")
    p.add_argument("--tcp", action="store_true", help="over TCP (default port 7400)")
    a = p.parse_args()
    url = f"http://{a.host}:{a.port}/rpc"
    task = json.loads(a.task)
    requests = [route_task(i, task, a.capability, a.strategy) for i in range(1, a.count + 1)]
    if a.tcp:
        answers = over_tcp(a.host, a.port, requests, a.token)
    elif a.batch:
        answers = rpc(url, requests, a.token, a.traceparent) or []
    else:
        answers = [rpc(url, r, a.token, a.traceparent) for r in requests]
    ok = True
    for answer in sorted(answers, key=lambda x: str(x.get("id"))):
        print(json.dumps(answer, sort_keys=True))
        ok = ok and "result" in answer
    return 0 if ok and len(answers) == a.count else 1


if __name__ == "__main__":
    sys.exit(main())
