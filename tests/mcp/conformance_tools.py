"""A small MCP server over stdio (standard library only) serving the tools the
MCP conformance suite's server scenarios call (test_simple_text,
test_image_content, test_audio_content, test_embedded_resource,
test_multiple_content_types, test_error_handling). erlmcp_flow_mcp_SUITE
registers it as an agent, so that the suite, talking to erlmcp_flow's
`POST /mcp`, is answered through the router by a real MCP server.
"""
import base64
import json
import sys

# a 1x1 red PNG and a 1-sample WAV
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753"
    "de0000000c4944415408d763f8cfc0000003010100c9fe92ef0000000049454e44ae426082")).decode()
WAV = base64.b64encode(
    b"RIFF" + (36 + 2).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
    + (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + (8000).to_bytes(4, "little")
    + (16000).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
    + b"data" + (2).to_bytes(4, "little") + b"\x00\x00").decode()

TOOLS = {
    "test_simple_text": {"content": [{"type": "text",
                                      "text": "This is a simple text response for testing."}]},
    "test_image_content": {"content": [{"type": "image", "data": PNG, "mimeType": "image/png"}]},
    "test_audio_content": {"content": [{"type": "audio", "data": WAV, "mimeType": "audio/wav"}]},
    "test_embedded_resource": {"content": [{"type": "resource", "resource": {
        "uri": "test://embedded-resource", "mimeType": "text/plain",
        "text": "This is an embedded resource content."}}]},
    "test_multiple_content_types": {"content": [
        {"type": "text", "text": "Multiple content types test:"},
        {"type": "image", "data": PNG, "mimeType": "image/png"},
        {"type": "resource", "resource": {"uri": "test://mixed-content-resource",
                                          "mimeType": "application/json",
                                          "text": json.dumps({"test": "data", "value": 123})}}]},
    "test_error_handling": {"isError": True, "content": [
        {"type": "text", "text": "This tool intentionally returns an error for testing"}]},
}


def send(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def main():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        msg = json.loads(line)
        method, mid = msg.get("method"), msg.get("id")
        if mid is None:
            continue  # notifications
        if method == "initialize":
            send({"jsonrpc": "2.0", "id": mid, "result": {
                "protocolVersion": msg["params"].get("protocolVersion", "2025-11-25"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "conformance-tools", "version": "1.0.0"}}})
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": mid, "result": {"tools": [
                {"name": n, "description": n.replace("_", " "),
                 "inputSchema": {"type": "object", "properties": {}}} for n in TOOLS]}})
        elif method == "tools/call" and msg["params"]["name"] in TOOLS:
            send({"jsonrpc": "2.0", "id": mid, "result": TOOLS[msg["params"]["name"]]})
        elif method == "ping":
            send({"jsonrpc": "2.0", "id": mid, "result": {}})
        else:
            send({"jsonrpc": "2.0", "id": mid,
                  "error": {"code": -32601, "message": "Method not found"}})


if __name__ == "__main__":
    main()
