/* describe.h - the "describe" step of the Agent-as-Tool contract: what an
 * agent says of itself, taken before any task runs.
 *
 * MCP agents (mcp-http, mcp-stdio) whose pool entry leaves out
 * `description` or `input_schema` are asked tools/list (every page, on a
 * session of their own, all agents at once); the tool the entry names
 * (`tool`, default its name) gives what is missing
 * (registry_describe_agent: the pool file's words always win).  a2a agents
 * without a description have their agent card read (GET card_url, default
 * the url's origin + /.well-known/agent-card.json): its description and
 * skills become theirs, one of a2a_version auto is settled on the version
 * the card names (registry_settle_a2a_version), so its calls need no
 * probe, and one whose a2a_streaming the pool left unset streams when the
 * card says capabilities.streaming (registry_settle_a2a_streaming).  Agents of other kinds say nothing of themselves through their
 * protocol, so their pool entry is their description.
 *
 * Each agent gets min(timeout_ms, max_wait_ms) for all its pages.  An agent
 * that cannot be asked (down, refuses, times out, lists no such tool, an
 * inputSchema outside the supported subset) keeps its pool entry as it is
 * and the run goes on: one line on `log` says why.  So does each agent that
 * was described, naming what was taken.
 */
#ifndef PS_ORCH_DESCRIBE_H
#define PS_ORCH_DESCRIBE_H

#include <stdio.h>

#include "orchestrator/executor.h"
#include "orchestrator/registry.h"

#define DESCRIBE_MAX_PAGES 64      /* tools/list pages read per agent */
#define DESCRIBE_WAIT_MS   10000   /* the callers' max_wait_ms: a server starts within it */

/* Describe the registry's MCP agents, blocking (a private event loop and
 * executor, both gone on return; stdio agents' processes are stopped).
 * `ecfg` as for exec_create (NULL: defaults).  *n_described (NULL-safe)
 * gets the number of agents that took something.  Returns PS_OK (also when
 * some agents could not be asked: see `log`), or PS_ENOMEM / PS_EIO when
 * the step itself could not run. */
int agents_describe(struct registry *reg, const struct exec_config *ecfg, int max_wait_ms, FILE *log,
                    int *n_described);

/* Read an A2A agent card (`len` bytes of JSON, untrusted): *description
 * (caller frees; NULL when the card has neither a description nor a
 * described skill) is the card's description, then "Skills: name:
 * description; ..."; *version the protocol the card names for the JSON-RPC
 * interface at `rpc_url` (equal but for a trailing '/') - a 1.0 card's
 * supportedInterfaces entry with protocolBinding "JSONRPC" (the highest
 * version there), a 0.3 card's top-level url with its protocolVersion -
 * or A2A_VERSION_AUTO when it names none it speaks at that url;
 * *streaming its capabilities.streaming (1 true, 0 false, -1 absent).  PS_OK, PS_EFORMAT (not a JSON object; err says why) or
 * PS_ENOMEM. */
int a2a_card_read(const char *body, size_t len, const char *rpc_url, char **description,
                  enum a2a_version *version, int *streaming, char *err, size_t errlen);

#endif /* PS_ORCH_DESCRIBE_H */
