"""A strict HTTP/1.1 client (h11) for every endpoint of an erlmcp_flow node.

    python h11_client.py HOST TRANSPORT_PORT METRICS_PORT

h11 refuses any response that breaks RFC 9112's framing (a bad status line,
a length that does not match, a body where none may be, bytes after a
response that are not a response). Each endpoint is asked on one kept-alive
connection, several times, with a Content-Length body and with a chunked one;
two requests are pipelined in one write. Prints one JSON object: each check
and what came back; exits 1 when one failed.
"""
import json
import socket
import sys

import h11


def exchange(host, port, requests, pipelined=False):
    """Sends the requests on one connection; returns [(status, headers, body)]."""
    sock = socket.create_connection((host, port), timeout=10)
    conn = h11.Connection(our_role=h11.CLIENT)
    answers = []

    def send(req):
        method, target, headers, body, chunked = req
        hdrs = [("Host", host)] + headers
        if body is not None and not chunked:
            hdrs.append(("Content-Length", str(len(body))))
        if chunked:
            hdrs.append(("Transfer-Encoding", "chunked"))
        out = conn.send(h11.Request(method=method, target=target, headers=hdrs))
        if body is not None:
            if chunked:
                half = len(body) // 2
                out += conn.send(h11.Data(data=body[:half]))
                out += conn.send(h11.Data(data=body[half:]))
            else:
                out += conn.send(h11.Data(data=body))
        out += conn.send(h11.EndOfMessage())
        return out

    def receive():
        status, headers, body = None, None, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = sock.recv(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status, headers = event.status_code, dict((k.decode(), v.decode()) for k, v in event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, headers, body
            elif isinstance(event, h11.ConnectionClosed):
                raise RuntimeError("closed before the response ended")

    if pipelined:
        # h11 will not send a second request before the first response; the
        # bytes are built by a second client state machine and written together
        first = send(requests[0])
        other = h11.Connection(our_role=h11.CLIENT)
        method, target, headers, body, _ = requests[1]
        second = other.send(h11.Request(method=method, target=target,
                                        headers=[("Host", host), ("Content-Length", str(len(body or b"")))] + headers))
        second += other.send(h11.Data(data=body or b"")) + other.send(h11.EndOfMessage())
        sock.sendall(first + second)
        answers.append(receive())
        conn.start_next_cycle()
        answers.append(receive())
    else:
        for req in requests:
            sock.sendall(send(req))
            answers.append(receive())
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
    sock.close()
    return answers


def main():
    host, port, metrics = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rpc = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "flow.route_task",
                      "params": {"task": {"n": 1}, "requirements": {"capabilities": ["echo"]}}}).encode()
    stats = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "flow.stats"}).encode()
    init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                       "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                                  "clientInfo": {"name": "h11", "version": "1"}}}).encode()
    json_h = [("Content-Type", "application/json")]
    mcp_h = json_h + [("Accept", "application/json, text/event-stream")]
    checks = {}
    failed = False

    def check(name, fn):
        nonlocal failed
        try:
            checks[name] = fn()
        except Exception as exc:  # a protocol error h11 found, or an assertion
            checks[name] = {"error": repr(exc)}
            failed = True

    def rpc_answers():
        out = exchange(host, port, [("POST", "/rpc", json_h, rpc, False),
                                    ("POST", "/rpc", json_h, rpc, True),
                                    ("POST", "/rpc", json_h, stats, False)])
        for status, _, body in out:
            assert status == 200 and "result" in json.loads(body), (status, body)
        return [s for s, _, _ in out]

    def health():
        out = exchange(host, port, [("GET", "/health", [], None, False), ("HEAD", "/health", [], None, False)])
        assert out[0][0] == 200 and json.loads(out[0][2])["status"] == "ok"
        assert out[1][0] == 200 and out[1][2] == b""
        return [s for s, _, _ in out]

    def mcp():
        (status, headers, body), = exchange(host, port, [("POST", "/mcp", mcp_h, init, False)])
        assert status == 200 and "mcp-session-id" in headers, (status, headers)
        assert json.loads(body)["result"]["protocolVersion"]
        return status

    def metrics_page():
        out = exchange(host, metrics, [("GET", "/metrics", [], None, False),
                                       ("GET", "/status.json", [], None, False),
                                       ("GET", "/status", [], None, False)])
        assert [s for s, _, _ in out] == [200, 200, 200], [s for s, _, _ in out]
        assert b"erlmcp_flow_agents" in out[0][2]
        return [s for s, _, _ in out]

    def pipelined():
        out = exchange(host, port, [("POST", "/rpc", json_h, stats, False),
                                    ("POST", "/rpc", json_h, rpc, False)], pipelined=True)
        assert [json.loads(b)["id"] for _, _, b in out] == [2, 1]
        return [s for s, _, _ in out]

    def errors():
        out = exchange(host, port, [("GET", "/nope", [], None, False), ("PUT", "/rpc", json_h, b"{}", False)])
        return [s for s, _, _ in out]

    for name, fn in [("rpc", rpc_answers), ("health", health), ("mcp", mcp), ("metrics", metrics_page),
                     ("pipelined", pipelined), ("errors", errors)]:
        check(name, fn)
    print(json.dumps(checks))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
