/* server.h - `paraserve serve`: the OpenAI-compatible HTTP server.
 *
 * Threads: the caller's thread runs the libevent loop (evhttp: parsing,
 * validation, chat-template rendering, SSE writes, metrics) and never
 * computes; the engine thread (engine.h) tokenizes, schedules and runs the
 * backend.  They meet only in engine_submit / engine_cancel and the engine's
 * event queue, whose eventfd is a persistent libevent read event here.
 *
 * Per request (struct gen_ctx): created when a generation request parses,
 * freed when the engine's DONE event for it arrives - never earlier, even
 * when the client leaves (the connection close callback only marks it gone
 * and asks the engine to cancel).
 *
 * Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models,
 * /v1/tasks (tasks_api.h), GET /health, GET /metrics.  With api_keys
 * configured every /v1/ route needs "Authorization: Bearer KEY" (the key's
 * tenant isolates prefix cache and tasks).  Errors are OpenAI-style JSON
 * bodies: 400 bad JSON / types / values / invalid UTF-8 / prompt longer
 * than the context, 401 missing or wrong key, 404 unknown model or path,
 * 405 wrong method, 413 body over max_body_bytes (any size), 503 while
 * shutting down.
 *
 * Connections (conn_limit.h): at most max_connections client connections
 * are open at once (config.h: default 4096, or what RLIMIT_NOFILE leaves
 * after a reserve for agent sockets and files when that is less); at the
 * cap the listener is disabled and new clients wait in the kernel's listen
 * backlog until one closes.  Every close callback on a server connection
 * goes through conn_closecb_set, never evhttp_connection_set_closecb: that
 * slot is how closes are counted.  No idle timeout is set (evhttp's
 * default for server connections: none).
 *
 * Shutdown (SIGTERM, SIGINT): close the listening socket, answer new
 * generation requests with 503, let in-flight ones finish for
 * shutdown_grace_ms, then cancel the rest; exit when none is left.
 */
#ifndef PS_SERVER_SERVER_H
#define PS_SERVER_SERVER_H

#include "config.h"

/* Load the model, start the engine, serve until a shutdown signal.
 * Returns PS_OK after a clean shutdown, else a status with a detail. */
int server_run(const struct server_config *cfg);
/* SIGHUP does nothing until server_run's loop handles it (it reopens the
 * --trajectories file): its default action would end the server while
 * it starts.  Call first thing; server_run calls it too. */
void server_hold_sighup(void);

#endif /* PS_SERVER_SERVER_H */
