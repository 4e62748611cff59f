"""A small MCP server over HTTPS (Streamable HTTP, JSON answers; standard
library only) with one tool, `echo`. erlmcp_flow_tls_SUITE registers it as an
agent at an https URL: erlmcp_flow must verify its certificate (the suite's
own CA) and its name.

    python3 https_server.py CERTFILE KEYFILE

It binds 127.0.0.1 on a free port and prints `PORT <n>` once it listens.
"""
import http.server
import json
import ssl
import sys
import uuid

VERSION = "2025-11-25"


def answer(msg):
    method = msg.get("method")
    if "id" not in msg:
        return None
    if method == "initialize":
        result = {"protocolVersion": msg.get("params", {}).get("protocolVersion", VERSION),
                  "capabilities": {"tools": {}},
                  "serverInfo": {"name": "https-echo", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": [{"name": "echo", "description": "echoes its arguments",
                             "inputSchema": {"type": "object"}}]}
    elif method == "tools/call" and msg.get("params", {}).get("name") == "echo":
        args = msg["params"].get("arguments", {})
        result = {"content": [{"type": "text", "text": json.dumps(args, sort_keys=True)}]}
    else:
        return {"jsonrpc": "2.0", "id": msg["id"],
                "error": {"code": -32601, "message": "Method not found"}}
    return {"jsonrpc": "2.0", "id": msg["id"], "result": result}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        msg = json.loads(self.rfile.read(length))
        reply = answer(msg)
        if reply is None:
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if msg.get("method") == "initialize":
            self.send_header("Mcp-Session-Id", uuid.uuid4().hex)
        self.end_headers()
        self.wfile.write(body)

    def do_DELETE(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    certfile, keyfile = sys.argv[1], sys.argv[2]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print("PORT", server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
