/* describe.c - agents describe themselves (MCP tools/list, the A2A agent
 * card): describe.h. */
#include "orchestrator/describe.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#include "common/json_get.h"
#include "common/status.h"
#include "orchestrator/exec_internal.h"
#include "orchestrator/httpc.h"
#include "orchestrator/jbuf.h"

#define CARD_PATH "/.well-known/agent-card.json"

struct describe;

struct describe_one {
    struct describe   *d;
    int                idx;          /* in the registry */
    struct agent_rt   *rt;
    struct adapter_op *op;           /* the page in flight; NULL: none */
    struct httpc_req  *card;         /* a2a: the agent card request in flight; NULL: none */
    char              *cursor;       /* the next page's cursor (owned) */
    int                pages;
    int                wait_ms;
    struct event      *timer;
    int                done;
    char               seen[256];    /* tool names listed so far, for the message */
};

struct describe {
    struct registry *reg;
    FILE            *log;
    struct exec     *ex;
    int              pending;
    int              n_described;
};

static void one_finish(struct describe_one *o, const char *why)
{
    if (o->done)
        return;
    o->done = 1;
    o->d->pending--;
    if (o->timer)
        evtimer_del(o->timer);
    if (o->card)
        httpc_cancel(o->card);
    o->card = NULL;
    const struct agent_spec *a = o->rt->spec;
    if (why && o->d->log)
        fprintf(o->d->log, "paraserve: agent '%s' (%s): not described by the server (%s); it keeps its pool entry\n",
                a->name, agent_kind_str(a->kind), why);
}

static void one_apply(struct describe_one *o, const cJSON *tool)
{
    const cJSON *desc = json_get(tool, "description");
    const cJSON *schema = json_get(tool, "inputSchema");
    int applied = 0;
    int rc = registry_describe_agent(o->d->reg, o->idx, cJSON_IsString(desc) ? desc->valuestring : NULL,
                                     schema, &applied);
    if (rc == PS_EINVAL && schema) {
        /* the schema is unusable: its words may still be */
        char why[600];
        snprintf(why, sizeof why, "%s", ps_error_last());
        rc = registry_describe_agent(o->d->reg, o->idx, cJSON_IsString(desc) ? desc->valuestring : NULL, NULL,
                                     &applied);
        if (o->d->log)
            fprintf(o->d->log, "paraserve: agent '%s' (%s): its tools/list inputSchema is not used (%s)\n",
                    o->rt->spec->name, agent_kind_str(o->rt->spec->kind), why);
    }
    if (rc) {
        one_finish(o, ps_error_last());
        return;
    }
    if (applied)
        o->d->n_described++;
    if (o->d->log)
        fprintf(o->d->log, "paraserve: agent '%s' (%s): %s from its tools/list\n", o->rt->spec->name,
                agent_kind_str(o->rt->spec->kind),
                applied == (REGISTRY_DESCRIBED_TEXT | REGISTRY_DESCRIBED_SCHEMA) ? "description and input_schema taken"
                : applied == REGISTRY_DESCRIBED_TEXT   ? "description taken"
                : applied == REGISTRY_DESCRIBED_SCHEMA ? "input_schema taken"
                                                       : "nothing new (the tool has no description or inputSchema)");
    one_finish(o, NULL);
}

static void one_start(struct describe_one *o);

static void on_page(void *ud, struct adapter_result *r)
{
    struct describe_one *o = ud;
    o->op = NULL;
    if (o->done)
        return;
    if (r->status != FB_OK) {
        char why[700];
        snprintf(why, sizeof why, "tools/list: %s", r->error ? r->error : fb_status_str(r->status));
        one_finish(o, why);
        return;
    }
    const cJSON *tools = json_get(r->result, "tools");
    if (!cJSON_IsArray(tools)) {
        one_finish(o, "its tools/list result has no \"tools\" array");
        return;
    }
    const struct agent_spec *a = o->rt->spec;
    const char *want = a->tool ? a->tool : a->name;
    const cJSON *t;
    cJSON_ArrayForEach(t, tools) {
        const cJSON *name = json_get(t, "name");
        if (!cJSON_IsString(name))
            continue;
        if (!strcmp(name->valuestring, want)) {
            one_apply(o, t);
            return;
        }
        size_t l = strlen(o->seen);
        if (l + strlen(name->valuestring) + 8 < sizeof o->seen)
            snprintf(o->seen + l, sizeof o->seen - l, "%s%s", l ? ", " : "", name->valuestring);
        else if (l + 6 < sizeof o->seen && !strstr(o->seen, "..."))
            snprintf(o->seen + l, sizeof o->seen - l, ", ...");
    }
    const cJSON *next = json_get(r->result, "nextCursor");
    if (cJSON_IsString(next) && next->valuestring[0] && o->pages < DESCRIBE_MAX_PAGES) {
        char *c = strdup(next->valuestring);
        if (!c) {
            one_finish(o, "out of memory");
            return;
        }
        free(o->cursor);
        o->cursor = c;
        one_start(o);
        return;
    }
    char why[400];
    snprintf(why, sizeof why, "it lists no tool '%s'%s%s%s%s", want, o->seen[0] ? " (it lists: " : "", o->seen,
             o->seen[0] ? ")" : "", o->pages >= DESCRIBE_MAX_PAGES ? " in the pages read" : "");
    one_finish(o, why);
}

/* the protocol a card's version string names: 1.x, 0.3.x; else auto */
static enum a2a_version card_version(const cJSON *v)
{
    if (!cJSON_IsString(v))
        return A2A_VERSION_AUTO;
    const char *s = v->valuestring;
    if (s[0] == '1' && (s[1] == '.' || !s[1]))
        return A2A_VERSION_1_0;
    if (!strncmp(s, "0.3", 3) && (s[3] == '.' || !s[3]))
        return A2A_VERSION_0_3;
    return A2A_VERSION_AUTO;
}

/* a and b name the same endpoint: equal but for one trailing '/' */
static int same_url(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la && a[la - 1] == '/')
        la--;
    if (lb && b[lb - 1] == '/')
        lb--;
    return la == lb && !strncmp(a, b, la);
}

int a2a_card_read(const char *body, size_t len, const char *rpc_url, char **description,
                  enum a2a_version *version, int *streaming, char *err, size_t errlen)
{
    *description = NULL;
    *version = A2A_VERSION_AUTO;
    *streaming = -1;
    err[0] = 0;
    cJSON *card = cJSON_ParseWithLength(body, len);
    if (!cJSON_IsObject(card)) {
        cJSON_Delete(card);
        snprintf(err, errlen, "the agent card is not a JSON object");
        return PS_EFORMAT;
    }
    /* Only what the card says of the endpoint the pool calls counts: a card
     * may list other interfaces (a public url, another binding) that speak
     * another version.  1.0: supportedInterfaces[{url, protocolBinding,
     * protocolVersion}], the highest version at our url; 0.3: the top-level
     * url (the preferred one, JSON-RPC unless preferredTransport says
     * otherwise) with the top-level protocolVersion. */
    const cJSON *ifs = json_get(card, "supportedInterfaces"), *it;
    cJSON_ArrayForEach(it, ifs) {
        const cJSON *binding = json_get(it, "protocolBinding");
        const cJSON *url = json_get(it, "url");
        enum a2a_version v = card_version(json_get(it, "protocolVersion"));
        if (cJSON_IsString(binding) && !strcmp(binding->valuestring, "JSONRPC") && v != A2A_VERSION_AUTO &&
            cJSON_IsString(url) && rpc_url && same_url(url->valuestring, rpc_url) && *version != A2A_VERSION_1_0)
            *version = v;
    }
    const cJSON *caps = json_get(card, "capabilities");
    const cJSON *streams = json_get(caps, "streaming");
    if (cJSON_IsBool(streams))
        *streaming = cJSON_IsTrue(streams);
    const cJSON *top_url = json_get(card, "url");
    const cJSON *transport = json_get(card, "preferredTransport");
    enum a2a_version top = card_version(json_get(card, "protocolVersion"));
    if (*version == A2A_VERSION_AUTO && top == A2A_VERSION_0_3 && cJSON_IsString(top_url) && rpc_url &&
        same_url(top_url->valuestring, rpc_url) &&
        (!transport || (cJSON_IsString(transport) && !strcmp(transport->valuestring, "JSONRPC"))))
        *version = A2A_VERSION_0_3;

    char stack[1024];
    struct jbuf b;
    jbuf_init(&b, stack, sizeof stack);
    const cJSON *desc = json_get(card, "description");
    if (cJSON_IsString(desc) && desc->valuestring[0])
        jbuf_add(&b, desc->valuestring, strlen(desc->valuestring));
    const cJSON *skills = json_get(card, "skills"), *sk;
    int n_skills = 0;
    cJSON_ArrayForEach(sk, skills) {
        const cJSON *name = json_get(sk, "name");
        const cJSON *sd = json_get(sk, "description");
        if (!cJSON_IsString(sd) || !sd->valuestring[0] || b.len > REGISTRY_DESCRIBED_MAX)
            continue;
        jbuf_add(&b, n_skills ? "; " : b.len ? " Skills: " : "Skills: ", n_skills ? 2 : b.len ? 9 : 8);
        if (cJSON_IsString(name) && name->valuestring[0]) {
            jbuf_add(&b, name->valuestring, strlen(name->valuestring));
            jbuf_add(&b, ": ", 2);
        }
        jbuf_add(&b, sd->valuestring, strlen(sd->valuestring));
        n_skills++;
    }
    int rc = PS_OK;
    if (b.oom)
        rc = PS_ENOMEM;
    else if (b.len && !(*description = strndup(b.p, b.len)))
        rc = PS_ENOMEM;
    jbuf_free(&b);
    cJSON_Delete(card);
    return rc;
}

static void on_card(void *ud, const struct httpc_response *resp)
{
    struct describe_one *o = ud;
    o->card = NULL;   /* finished: httpc frees it */
    if (o->done)
        return;
    enum fb_status st;
    int retry = 0;
    char err[512];
    if (!adapter_http_classify(resp, &st, err, sizeof err, &retry)) {
        char why[600];
        snprintf(why, sizeof why, "agent card: %s", err);
        one_finish(o, why);
        return;
    }
    char *text = NULL;
    enum a2a_version v;
    int streaming;
    int rc = a2a_card_read(resp->body, resp->body_len, o->rt->spec->url, &text, &v, &streaming, err, sizeof err);
    if (rc) {
        one_finish(o, rc == PS_ENOMEM ? "out of memory" : err);
        return;
    }
    int applied = 0, settled = 0, streams = 0;
    rc = text ? registry_describe_agent(o->d->reg, o->idx, text, NULL, &applied) : PS_OK;
    free(text);
    if (!rc && v != A2A_VERSION_AUTO)
        rc = registry_settle_a2a_version(o->d->reg, o->idx, v, &settled);
    if (!rc && streaming >= 0)
        rc = registry_settle_a2a_streaming(o->d->reg, o->idx, streaming, &streams);
    if (rc) {
        one_finish(o, ps_error_last());
        return;
    }
    if (applied)
        o->d->n_described++;
    const struct agent_spec *a = o->rt->spec;
    if (o->d->log)
        fprintf(o->d->log, "paraserve: agent '%s' (a2a): %s from its agent card%s%s%s\n", a->name,
                applied ? "description taken" : "nothing new (the card has no description or described skill)",
                settled ? "; protocol " : "",
                !settled ? "" : a->a2a_version == A2A_VERSION_1_0 ? "1.0" : "0.3",
                !streams ? "" : a->a2a_streaming == 1 ? "; streaming" : "; not streaming");
    one_finish(o, NULL);
}

/* GET the agent card: card_url, else the url's origin + CARD_PATH. */
static void card_start(struct describe_one *o)
{
    const struct agent_spec *a = o->rt->spec;
    static char *const hdrs[] = { "Accept: application/json", NULL };
    char url[2048];
    const char *host = strstr(a->url, "://") + 3;   /* the registry checked the scheme */
    size_t origin = (size_t)(host - a->url) + strcspn(host, "/?#");
    if (a->card_url) {
        if (strlen(a->card_url) >= sizeof url) {
            one_finish(o, "its card_url is too long");
            return;
        }
        snprintf(url, sizeof url, "%s", a->card_url);
    } else {
        if (origin + sizeof CARD_PATH > sizeof url) {
            one_finish(o, "its url is too long to derive the agent card's");
            return;
        }
        memcpy(url, a->url, origin);
        memcpy(url + origin, CARD_PATH, sizeof CARD_PATH);
    }
    /* the agent's own headers (credentials, say) go only to its own origin */
    int same_origin = !strncmp(url, a->url, origin) && strchr("/?#", url[origin]);
    if (!(o->card = httpc_request(o->d->ex->http, "GET", url, hdrs, same_origin ? a->headers : NULL, NULL, 0, 0,
                                  a->ca_file, on_card, o))) {
        char why[600];
        snprintf(why, sizeof why, "the agent card could not be asked for: %s", ps_error_last());
        one_finish(o, why);
    }
}

static void one_start(struct describe_one *o)
{
    if (o->rt->spec->kind == AGENT_A2A) {
        card_start(o);
        return;
    }
    o->pages++;
    if (!(o->op = adapter_start_mcp_list(o->d->ex, o->rt, o->cursor, on_page, o))) {
        char why[600];
        snprintf(why, sizeof why, "tools/list could not be sent: %s", ps_error_last());
        one_finish(o, why);
    }
}

static void on_timeout(evutil_socket_t fd, short what, void *ud)
{
    (void)fd;
    (void)what;
    struct describe_one *o = ud;
    if (o->op)
        adapter_cancel(o->op);
    o->op = NULL;
    char why[96];
    snprintf(why, sizeof why, "no answer to %s within %d ms",
             o->rt->spec->kind == AGENT_A2A ? "the agent card request" : "tools/list", o->wait_ms);
    one_finish(o, why);
}

static int wants_describe(const struct agent_spec *a)
{
    return ((a->kind == AGENT_MCP_HTTP || a->kind == AGENT_MCP_STDIO) &&
            (!a->description[0] || !a->input_schema_given)) ||
           (a->kind == AGENT_A2A && !a->description[0]);
}

int agents_describe(struct registry *reg, const struct exec_config *ecfg, int max_wait_ms, FILE *log,
                    int *n_described)
{
    if (n_described)
        *n_described = 0;
    int n = registry_count(reg), want = 0;
    for (int i = 0; i < n; i++)
        want += wants_describe(registry_at(reg, i));
    if (!want)
        return PS_OK;
    struct describe d = { .reg = reg, .log = log };
    struct describe_one *ones = calloc((size_t)n, sizeof *ones);
    struct event_base *base = event_base_new();
    int rc = PS_OK;
    if (!ones || !base) {
        rc = ps_error_set(PS_ENOMEM, "describe: out of memory");
        goto out;
    }
    struct exec_config one_loop = ecfg ? *ecfg : (struct exec_config){0};
    one_loop.http_threads = 0;                 /* a handful of requests: no I/O threads */
    if (!(d.ex = exec_create(base, reg, &one_loop))) {
        rc = PS_ENOMEM;
        goto out;
    }
    for (int i = 0; i < n; i++) {
        struct describe_one *o = &ones[i];
        o->d = &d;
        o->idx = i;
        o->rt = &d.ex->agents[i];
        if (!wants_describe(o->rt->spec)) {
            o->done = 1;
            continue;
        }
        o->wait_ms = o->rt->spec->timeout_ms < max_wait_ms ? o->rt->spec->timeout_ms : max_wait_ms;
        const struct timeval tv = { o->wait_ms / 1000, (o->wait_ms % 1000) * 1000 };
        if (!(o->timer = evtimer_new(base, on_timeout, o)) || evtimer_add(o->timer, &tv)) {
            rc = ps_error_set(PS_ENOMEM, "describe: out of memory");
            o->done = 1;
            break;
        }
        d.pending++;
        one_start(o);
    }
    while (d.pending > 0 && rc == PS_OK)
        if (event_base_loop(base, EVLOOP_ONCE) < 0)
            rc = ps_error_set(PS_EIO, "describe: the event loop failed");
    for (int i = 0; i < n; i++) {
        if (ones[i].op)
            adapter_cancel(ones[i].op);
        if (ones[i].card)
            httpc_cancel(ones[i].card);
        if (ones[i].timer)
            event_free(ones[i].timer);
        free(ones[i].cursor);
    }
    if (n_described)
        *n_described = d.n_described;
out:
    exec_destroy(d.ex);
    if (base)
        event_base_free(base);
    free(ones);
    return rc;
}
