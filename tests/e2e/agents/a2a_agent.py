#!/usr/bin/env python3
"""A real A2A agent for the e2e tests, built on the official A2A Python SDK
(`a2a-sdk`, protocol 1.0, JSON-RPC binding), served by uvicorn.

    a2a_agent.py PORT [--v03] [--card03] [--stream]

--v03 also accepts protocol 0.3 requests (message/send, tasks/get,
tasks/cancel) on the same endpoint, as the SDK's compatibility layer does;
without it the agent speaks 1.0 only (SendMessage, GetTask, CancelTask) and
answers 0.3 methods with JSON-RPC -32601, as a current SDK agent does by
default.  --card03 serves an agent card in 0.3's shape (protocolVersion
"0.3.0" at its top level), as a 0.3 agent does, in place of the SDK's 1.0
card.  --stream says capabilities.streaming in the card, so the SDK
answers SendStreamingMessage / message/stream with an SSE stream (without
it, -32004: streaming not supported).

The user text picks the behaviour:
    echo:TEXT          one Message with TEXT (no task)
    sleep:MS:TEXT      a task: working, then after MS ms an artifact with
                       TEXT and completed
    fail:TEXT          a task that fails with TEXT as its status message
    data:JSON          a task completed with a data part (JSON) and no text
GET /stats answers {"cancelled": [task ids], "methods": {method: count},
"versions": {A2A-Version header or "-": count}, "accepts": {Accept header:
count}} so a test can see what
paraserve sent.
"""
import asyncio
import json
import sys
from collections import Counter

import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from a2a.helpers.proto_helpers import new_data_part, new_task_from_user_message, new_text_message, new_text_part
from a2a.server.agent_execution.agent_executor import AgentExecutor
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes.agent_card_routes import create_agent_card_routes
from a2a.server.routes.jsonrpc_routes import create_jsonrpc_routes
from a2a.server.tasks.inmemory_task_store import InMemoryTaskStore
from a2a.server.tasks.task_updater import TaskUpdater
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill

CANCELLED = []
METHODS = Counter()
VERSIONS = Counter()
ACCEPTS = Counter()


class Executor(AgentExecutor):
    async def execute(self, context, event_queue):
        text = context.get_user_input()
        if text.startswith("echo:"):
            await event_queue.enqueue_event(new_text_message(text[5:], context_id=context.context_id))
            return
        task = context.current_task or new_task_from_user_message(context.message)
        await event_queue.enqueue_event(task)
        up = TaskUpdater(event_queue, task.id, task.context_id)
        await up.start_work()
        if text.startswith("sleep:"):
            _, ms, rest = text.split(":", 2)
            await asyncio.sleep(int(ms) / 1000)
            await up.add_artifact([new_text_part(rest)], name="answer")
            await up.complete()
        elif text.startswith("fail:"):
            await up.failed(new_text_message(text[5:], context_id=task.context_id, task_id=task.id))
        elif text.startswith("data:"):
            await up.add_artifact([new_data_part(json.loads(text[5:]))], name="answer")
            await up.complete()
        else:
            await up.failed(new_text_message(f"unknown request {text[:40]!r}",
                                             context_id=task.context_id, task_id=task.id))

    async def cancel(self, context, event_queue):
        CANCELLED.append(context.task_id)
        up = TaskUpdater(event_queue, context.task_id, context.context_id)
        await up.cancel()


async def stats(request):
    return JSONResponse({"cancelled": CANCELLED, "methods": dict(METHODS), "versions": dict(VERSIONS),
                         "accepts": dict(ACCEPTS)})


def main():
    port = int(sys.argv[1])
    v03 = "--v03" in sys.argv[2:]
    stream = "--stream" in sys.argv[2:]
    url = f"http://127.0.0.1:{port}/a2a"
    card = AgentCard(
        name="sdk-agent", description="A2A SDK test agent", version="1.0",
        supported_interfaces=[AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")],
        capabilities=AgentCapabilities(streaming=stream),
        default_input_modes=["text/plain"], default_output_modes=["text/plain", "application/json"],
        skills=[AgentSkill(id="echo", name="echo", description="echo and sleep", tags=["test"])])
    handler = DefaultRequestHandler(agent_executor=Executor(), task_store=InMemoryTaskStore(), agent_card=card)
    routes = create_jsonrpc_routes(handler, "/a2a", enable_v0_3_compat=v03)
    if "--card03" in sys.argv[2:]:
        card03 = {"name": "sdk-agent", "description": "A2A 0.3 test agent", "url": url, "version": "1.0",
                  "protocolVersion": "0.3.0", "preferredTransport": "JSONRPC",
                  "capabilities": {"streaming": stream}, "defaultInputModes": ["text/plain"],
                  "defaultOutputModes": ["text/plain"],
                  "skills": [{"id": "echo", "name": "echo", "description": "echo and sleep", "tags": []}]}
        routes.append(Route("/.well-known/agent-card.json", lambda request: JSONResponse(card03), methods=["GET"]))
    else:
        routes += create_agent_card_routes(card)
    routes.append(Route("/stats", stats, methods=["GET"]))
    app = Starlette(routes=routes)

    async def count(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/a2a" and scope["method"] == "POST":
            chunks, more = [], True
            while more:
                m = await receive()
                chunks.append(m.get("body", b""))
                more = m.get("more_body", False)
            body = b"".join(chunks)
            try:
                METHODS[json.loads(body).get("method", "?")] += 1
            except (ValueError, AttributeError):
                METHODS["?"] += 1
            hdrs = dict(scope["headers"])
            VERSIONS[hdrs.get(b"a2a-version", b"-").decode()] += 1
            ACCEPTS[hdrs.get(b"accept", b"-").decode()] += 1
            sent = False

            async def replay():
                nonlocal sent
                if sent:
                    return await receive()
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await app(scope, replay, send)
        return await app(scope, receive, send)

    uvicorn.run(count, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
