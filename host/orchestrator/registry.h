/* registry.h - the Agent-as-Tool registry: every agent and tool, whatever
 * its protocol, described by one spec (proto/agent.schema.json) and
 * looked up by name.
 *
 * File format: {"agents":[{...spec...}, ...]}.  Loading is strict: an
 * unknown field, a wrong type or a missing required field fails with a
 * message naming it ("agents.json: agents[3].timeout_ms: must be an
 * integer in 1..3600000"), recorded with ps_error_set().
 *
 * Ownership: the registry owns every spec and string in it; specs live
 * until registry_free() and are immutable once an executor or a catalogue
 * uses them.  Before that, registry_describe_agent() may fill in what an
 * agent says of itself (agents_describe(), describe.h).
 */
#ifndef PS_ORCH_REGISTRY_H
#define PS_ORCH_REGISTRY_H

#include <cjson/cJSON.h>

#define AGENT_KIND_TABLE(X)                 \
    X(AGENT_LOCAL,       "local")           \
    X(AGENT_OPENAI_CHAT, "openai-chat")     \
    X(AGENT_MCP_HTTP,    "mcp-http")        \
    X(AGENT_MCP_STDIO,   "mcp-stdio")       \
    X(AGENT_A2A,         "a2a")             \
    X(AGENT_HTTP_JSON,   "http-json")       \
    X(AGENT_BUILTIN,     "builtin")

enum agent_kind {
#define AGENT_KIND_ENUM(k, s) k,
    AGENT_KIND_TABLE(AGENT_KIND_ENUM)
#undef AGENT_KIND_ENUM
    AGENT_KIND_COUNT
};

const char *agent_kind_str(enum agent_kind k);

/* The A2A protocol version an a2a agent is spoken to in ("a2a_version"):
 * 1.0 (SendMessage / GetTask / CancelTask, A2A-Version: 1.0 header, the
 * SDKs' default since 2026), 0.3 (message/send / tasks/get / tasks/cancel),
 * or auto: 1.0 first, and 0.3 from then on for an agent that answers
 * SendMessage with JSON-RPC -32601 (method not found). */
enum a2a_version { A2A_VERSION_AUTO, A2A_VERSION_1_0, A2A_VERSION_0_3 };

struct agent_spec {
    char           *name;            /* unique, [A-Za-z0-9_.-]{1,64} */
    enum agent_kind kind;
    char           *description;     /* "" when absent */
    cJSON          *input_schema;    /* never NULL; {"type":"object"} default */
    int             input_schema_given; /* input_schema came from the pool file */
    char           *url;             /* http(s) kinds */
    char          **command;         /* mcp-stdio argv, NULL-terminated */
    char          **headers;         /* "Name: value" lines, NULL-terminated */
    char           *ca_file;         /* https kinds: PEM CA bundle that verifies the agent
                                        (private CAs); NULL: the system's */
    char           *tool;            /* builtin / MCP tool name (default: name) */
    enum a2a_version a2a_version;    /* a2a only (default auto) */
    char           *card_url;        /* a2a: its agent card (describe.h); NULL: the url's
                                        origin + /.well-known/agent-card.json */
    int             a2a_streaming;   /* a2a: 1 stream the reply (SendStreamingMessage /
                                        message/stream), 0 send and poll, -1 unset (the
                                        card's capabilities.streaming, else 0) */
    char           *model;           /* openai-chat model ("default") */
    char           *system_prompt;   /* local / openai-chat role prompt */
    int             max_tokens;      /* local / openai-chat (default 256) */
    int             timeout_ms;      /* per attempt (default 30000) */
    int             max_concurrency; /* in flight at once (default 16) */
    int             retries;         /* extra attempts for retryable failures (default 2) */
    int             backoff_ms;      /* base of exponential backoff (default 100) */
    int             breaker_failures;/* consecutive failures that open the breaker (5) */
    int             breaker_open_ms; /* how long it stays open (5000) */
    int             deterministic;   /* same args, same result: a repeated call teaches the model
                                        nothing (default: builtins but time) */
    cJSON          *example;         /* {"task","args","result"} shown to the model, or NULL;
                                        args valid for input_schema */
};

struct registry;

/* Load a registry from a file / from JSON text.  `origin` names the source
 * in error messages.  Returns PS_OK and *out, or an error with detail. */
int  registry_load_file(const char *path, struct registry **out);
int  registry_load_json(const char *text, const char *origin, struct registry **out);
void registry_free(struct registry *reg);

int                      registry_count(const struct registry *reg);
const struct agent_spec *registry_at(const struct registry *reg, int i);
/* NULL when no agent has that name. */
const struct agent_spec *registry_find(const struct registry *reg, const char *name);

/* Fill in agent i's description and input_schema where the pool file gave
 * none, from what the agent says of itself (MCP tools/list): `description`
 * (NULL: none) is made one line (control characters to spaces, runs of
 * spaces to one), at most REGISTRY_DESCRIBED_MAX bytes (cut on a UTF-8
 * boundary); `input_schema` (NULL: none) must be an object that
 * jschema_check() accepts and that admits the spec's example args, if
 * any.  *applied gets REGISTRY_DESCRIBED_TEXT / _SCHEMA for what was
 * taken.  Returns PS_OK, PS_EINVAL (the schema is not usable: nothing is
 * changed, the message says why) or PS_ENOMEM. */
#define REGISTRY_DESCRIBED_MAX    1024
#define REGISTRY_DESCRIBED_TEXT   1
#define REGISTRY_DESCRIBED_SCHEMA 2
int registry_describe_agent(struct registry *reg, int i, const char *description,
                            const cJSON *input_schema, int *applied);

/* Settle a2a agent i, of version auto, on `v` (what its agent card says);
 * an agent pinned in the pool file keeps its version (*applied 0).
 * PS_OK, or PS_EINVAL for an agent that is not a2a or a `v` of auto. */
int registry_settle_a2a_version(struct registry *reg, int i, enum a2a_version v, int *applied);

/* Set a2a agent i's a2a_streaming when the pool file left it unset
 * (*applied 1); PS_EINVAL for an agent that is not a2a. */
int registry_settle_a2a_streaming(struct registry *reg, int i, int streaming, int *applied);

/* The catalogue the orchestrator model reads: a new JSON array (caller
 * frees) of {"name","kind","description","input_schema"}; NULL when out of
 * memory (never a partial catalogue). */
cJSON *registry_catalogue(const struct registry *reg);

#endif /* PS_ORCH_REGISTRY_H */
