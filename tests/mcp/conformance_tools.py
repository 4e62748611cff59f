"""A small MCP server over stdio (standard library only) serving the tools the
MCP conformance suite's server scenarios call (test_simple_text,
test_image_content, test_audio_content, test_embedded_resource,
test_multiple_content_types, test_error_handling, and those that send their
client something during the call: test_tool_with_logging,
test_tool_with_progress, test_sampling, test_elicitation,
test_elicitation_sep1034_defaults, test_elicitation_sep1330_enums).
erlmcp_flow_mcp_SUITE registers it as an agent, so that the suite, talking to
erlmcp_flow's `POST /mcp`, is answered through the router by a real MCP
server, and what the server sends during a call must pass through erlmcp_flow
to reach the suite.

Calls run in threads of their own: a call that asks the client something
waits for the answer while the main loop goes on reading.
"""
import base64
import itertools
import json
import queue
import sys
import threading
import time

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


LOCK = threading.Lock()
WAITING = {}
IDS = itertools.count(1)


def send(msg):
    with LOCK:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()


def ask(method, params):
    """A request to the client; its answer (result or error object)."""
    rid = "srv-%d" % next(IDS)
    box = queue.Queue()
    WAITING[rid] = box
    send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
    return box.get(timeout=30)


def log(level, data):
    send({"jsonrpc": "2.0", "method": "notifications/message",
          "params": {"level": level, "logger": "conformance-tools", "data": data}})


def text(t):
    return {"content": [{"type": "text", "text": t}]}


def with_logging(_args, _meta):
    log("info", "Tool execution started")
    time.sleep(0.05)
    log("info", "Tool processing data")
    time.sleep(0.05)
    log("info", "Tool execution completed")
    return text("Tool with logging executed successfully")


def with_progress(_args, meta):
    token = meta.get("progressToken")
    for p in (0, 50, 100):
        if token is not None:
            send({"jsonrpc": "2.0", "method": "notifications/progress",
                  "params": {"progressToken": token, "progress": p, "total": 100}})
        if p < 100:
            time.sleep(0.05)
    return text("Tool with progress executed successfully")


def sampling(args, _meta):
    answer = ask("sampling/createMessage", {
        "messages": [{"role": "user", "content": {"type": "text", "text": args.get("prompt", "")}}],
        "maxTokens": 100})
    if "error" in answer:
        return {"isError": True, **text("Sampling failed: %s" % answer["error"].get("message"))}
    return text("LLM response: %s" % answer["result"].get("content", {}).get("text", ""))


def elicit(message, schema):
    answer = ask("elicitation/create", {"message": message, "requestedSchema": schema})
    if "error" in answer:
        return {"isError": True, **text("Elicitation failed: %s" % answer["error"].get("message"))}
    r = answer["result"]
    return text("Elicitation completed: action=%s, content=%s"
                % (r.get("action"), json.dumps(r.get("content", {}))))


def elicitation(args, _meta):
    return elicit(args.get("message", ""), {
        "type": "object",
        "properties": {"username": {"type": "string", "description": "User's response"},
                       "email": {"type": "string", "description": "User's email address"}},
        "required": ["username", "email"]})


def sep1034(_args, _meta):
    return elicit("Test client default value handling - please accept with defaults", {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "User name", "default": "John Doe"},
            "age": {"type": "integer", "description": "User age", "default": 30},
            "score": {"type": "number", "description": "User score", "default": 95.5},
            "status": {"type": "string", "description": "User status",
                       "enum": ["active", "inactive", "pending"], "default": "active"},
            "verified": {"type": "boolean", "description": "Verification status", "default": True}},
        "required": []})


def sep1330(_args, _meta):
    return elicit("Choose options", {
        "type": "object",
        "properties": {
            "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
            "titledSingle": {"type": "string", "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"}]},
            "legacyEnum": {"type": "string", "enum": ["opt1", "opt2", "opt3"],
                           "enumNames": ["Option One", "Option Two", "Option Three"]},
            "untitledMulti": {"type": "array", "items": {"type": "string",
                                                         "enum": ["option1", "option2", "option3"]}},
            "titledMulti": {"type": "array", "items": {"anyOf": [
                {"const": "value1", "title": "First Choice"},
                {"const": "value2", "title": "Second Choice"},
                {"const": "value3", "title": "Third Choice"}]}}},
        "required": []})


CALLS = {
    "test_tool_with_logging": with_logging,
    "test_tool_with_progress": with_progress,
    "test_sampling": sampling,
    "test_elicitation": elicitation,
    "test_elicitation_sep1034_defaults": sep1034,
    "test_elicitation_sep1330_enums": sep1330,
}


def run_call(mid, name, args, meta):
    try:
        result = CALLS[name](args, meta)
    except Exception as e:  # the call's failure, as a tool error
        result = {"isError": True, **text("%s failed: %s" % (name, e))}
    send({"jsonrpc": "2.0", "id": mid, "result": result})


def main():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        msg = json.loads(line)
        method, mid = msg.get("method"), msg.get("id")
        if method is None and mid in WAITING:
            WAITING.pop(mid).put(msg)  # the client's answer to our request
            continue
        if mid is None:
            continue  # notifications
        if method == "initialize":
            send({"jsonrpc": "2.0", "id": mid, "result": {
                "protocolVersion": msg["params"].get("protocolVersion", "2025-11-25"),
                "capabilities": {"tools": {}, "logging": {}},
                "serverInfo": {"name": "conformance-tools", "version": "1.0.0"}}})
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": mid, "result": {"tools": [
                {"name": n, "description": n.replace("_", " "),
                 "inputSchema": {"type": "object", "properties": {}}}
                for n in list(TOOLS) + list(CALLS)]}})
        elif method == "tools/call" and msg["params"]["name"] in TOOLS:
            send({"jsonrpc": "2.0", "id": mid, "result": TOOLS[msg["params"]["name"]]})
        elif method == "tools/call" and msg["params"]["name"] in CALLS:
            p = msg["params"]
            threading.Thread(target=run_call, daemon=True,
                             args=(mid, p["name"], p.get("arguments") or {},
                                   p.get("_meta") or {})).start()
        elif method == "logging/setLevel":
            send({"jsonrpc": "2.0", "id": mid, "result": {}})
        elif method == "ping":
            send({"jsonrpc": "2.0", "id": mid, "result": {}})
        else:
            send({"jsonrpc": "2.0", "id": mid,
                  "error": {"code": -32601, "message": "Method not found"}})


if __name__ == "__main__":
    main()
