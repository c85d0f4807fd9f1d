"""A scripted MCP stdio server for the describe step (tools/list), with
answers a real server may give and a hostile one may:

    python3 mcp_list_stub.py MODE [LOG]

MODE:
  paged      the wanted tool ("lookup") on the second page, after a
             nextCursor; its description has control characters and runs
             of spaces and is 3,000 bytes long
  badschema  "lookup" with an inputSchema outside the supported subset
             ($ref) and a plain description
  notools    a tools/list result without a "tools" array
  error      a JSON-RPC error to tools/list
  silent     never answers tools/list
  garbage    a non-JSON line, then a tools/list result whose tools are
             not objects
Every mode answers initialize, and tools/call of "lookup" with
{"found": <args.key>}, except a call with {"hang": true}, never answered.  LOG, when given, gets each message's id, method and
params, one JSON line each.
"""
import json
import sys

mode = sys.argv[1]
log = open(sys.argv[2], "a") if len(sys.argv) > 2 else None
SCHEMA = {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"],
          "additionalProperties": False}


def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def tools_list(rid, params):
    cursor = (params or {}).get("cursor")
    if mode == "paged":
        if cursor is None:
            return {"tools": [{"name": "other", "description": "Not this one.", "inputSchema": {"type": "object"}}],
                    "nextCursor": "page-2"}
        if cursor == "page-2":
            words = "Looks a key up.\r\n\tIn\x1b[2J the   table." + " more" * 600
            return {"tools": [{"name": "lookup", "description": words, "inputSchema": SCHEMA}]}
        return {"tools": []}
    if mode == "badschema":
        return {"tools": [{"name": "lookup", "description": "Looks a key up.",
                           "inputSchema": {"$ref": "#/$defs/args", "$defs": {"args": SCHEMA}}}]}
    if mode == "notools":
        return {"tool": "lookup"}
    if mode == "garbage":
        return {"tools": ["lookup", 7, None, {"name": 5}]}
    raise AssertionError(mode)


for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if log:
        log.write(json.dumps({"id": m.get("id"), "method": m.get("method"), "params": m.get("params")}) + "\n")
        log.flush()
    rid, method = m.get("id"), m.get("method")
    if rid is None:
        continue
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": rid, "result": {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                                                       "serverInfo": {"name": "stub", "version": "1"}}})
    elif method == "tools/list":
        if mode == "silent":
            continue
        if mode == "error":
            send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "no listing here"}})
            continue
        if mode == "garbage":
            sys.stdout.write("this is not JSON\n")
        send({"jsonrpc": "2.0", "id": rid, "result": tools_list(rid, m.get("params"))})
    elif method == "tools/call":
        args = m["params"].get("arguments") or {}
        if args.get("hang"):
            continue
        send({"jsonrpc": "2.0", "id": rid,
              "result": {"content": [{"type": "text", "text": json.dumps({"found": args.get("key")})}],
                         "structuredContent": {"found": args.get("key")}}})
