/* describe.c - MCP agents describe themselves (tools/list): describe.h. */
#include "orchestrator/describe.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "orchestrator/exec_internal.h"

struct describe;

struct describe_one {
    struct describe   *d;
    int                idx;          /* in the registry */
    struct agent_rt   *rt;
    struct adapter_op *op;           /* the page in flight; NULL: none */
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
    const struct agent_spec *a = o->rt->spec;
    if (why && o->d->log)
        fprintf(o->d->log, "paraserve: agent '%s' (%s): not described by the server (%s); it keeps its pool entry\n",
                a->name, agent_kind_str(a->kind), why);
}

static void one_apply(struct describe_one *o, const cJSON *tool)
{
    const cJSON *desc = cJSON_GetObjectItemCaseSensitive(tool, "description");
    const cJSON *schema = cJSON_GetObjectItemCaseSensitive(tool, "inputSchema");
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
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(r->result, "tools");
    if (!cJSON_IsArray(tools)) {
        one_finish(o, "its tools/list result has no \"tools\" array");
        return;
    }
    const struct agent_spec *a = o->rt->spec;
    const char *want = a->tool ? a->tool : a->name;
    const cJSON *t;
    cJSON_ArrayForEach(t, tools) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(t, "name");
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
    const cJSON *next = cJSON_GetObjectItemCaseSensitive(r->result, "nextCursor");
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

static void one_start(struct describe_one *o)
{
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
    snprintf(why, sizeof why, "no answer to tools/list within %d ms", o->wait_ms);
    one_finish(o, why);
}

static int wants_describe(const struct agent_spec *a)
{
    return (a->kind == AGENT_MCP_HTTP || a->kind == AGENT_MCP_STDIO) && (!a->description[0] || !a->input_schema_given);
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
    if (!(d.ex = exec_create(base, reg, ecfg))) {
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
