/* engine.c - the engine thread (see engine.h for the protocol). */
#include "engine.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "../common/status.h"

enum cmd_kind { CMD_SUBMIT, CMD_CANCEL, CMD_CANCEL_ALL };

/* One message from the event loop to the engine. */
struct cmd {
    struct cmd   *next;
    enum cmd_kind kind;
    uint64_t      id;
    /* CMD_SUBMIT: deep copy of the request */
    struct engine_request req;
    char         *prompt;
    struct text_span *spans;   /* [req.n_special_spans] when req.special_spans */
    int32_t      *prompt_ids;
    char        **stop;
    struct sampler_bias *bias;
};

struct engine {
    backend          *be;
    const tokenizer  *tok;
    sched            *sched;
    struct engine_config cfg;
    pthread_t         thread;
    bool              thread_started;
    int               in_fd, out_fd; /* eventfds: wake engine / wake event loop */

    pthread_mutex_t   in_mu;
    struct cmd       *in_head, *in_tail;
    bool              stop;

    pthread_mutex_t   out_mu;
    struct engine_event *out_head, *out_tail;
    bool              out_signalled; /* engine thread only */

    pthread_mutex_t   stats_mu;
    struct engine_stats stats;

    /* The token ids of the last prompt text tokenized for a prompt group
     * (engine thread only): the other choices of the request reuse them
     * instead of tokenizing the same text again (a 1 MB prompt costs ~0.1
     * s on the engine thread, n = 128 times that stalled every stream). */
    struct {
        uint64_t group;       /* 0: empty */
        uint32_t tenant;
        bool     parse_special, add_bos, has_spans;
        struct text_span *spans;
        size_t   n_spans;
        char    *text;
        int32_t *ids;
        size_t   n;
    } last_prompt;
    uint64_t          prompts_tokenized;   /* engine thread only; copied to stats */

    atomic_uint_fast64_t next_id;
};

void engine_events_free(struct engine_event *ev)
{
    while (ev) {
        struct engine_event *n = ev->next;
        free(ev->text);
        free(ev->piece);
        free(ev->error);
        free(ev);
        ev = n;
    }
}

static void cmd_free(struct cmd *c)
{
    if (!c)
        return;
    if (c->req.constraint.ops && c->req.constraint.ops->release)
        c->req.constraint.ops->release(c->req.constraint.ctx);
    if (c->stop)
        for (int32_t i = 0; i < c->req.n_stop; i++)
            free(c->stop[i]);
    free(c->stop);
    free(c->bias);
    free(c->prompt_ids);
    free(c->prompt);
    free(c->spans);
    free(c);
}

static void wake(int fd)
{
    uint64_t one = 1;
    ssize_t r = write(fd, &one, sizeof one);
    (void)r; /* EAGAIN: counter saturated, the reader wakes anyway */
}

static void drain(int fd)
{
    uint64_t v;
    ssize_t r = read(fd, &v, sizeof v);
    (void)r;
}

/* ---- engine thread: events out ---------------------------------------------- */

/* Queue an event (engine thread).  Out of memory: the event is dropped,
 * except DONE which is retried by the caller's design (tiny allocation). */
static void push_event(engine *e, struct engine_event *ev)
{
    pthread_mutex_lock(&e->out_mu);
    if (e->out_tail)
        e->out_tail->next = ev;
    else
        e->out_head = ev;
    e->out_tail = ev;
    pthread_mutex_unlock(&e->out_mu);
}

static struct engine_event *event_new(enum engine_event_kind kind, uint64_t id, void *user,
                                      const char *text, size_t len)
{
    struct engine_event *ev = calloc(1, sizeof *ev);
    if (!ev)
        return NULL;
    ev->kind = kind;
    ev->id = id;
    ev->user = user;
    ev->token = -1;
    ev->text = malloc(len + 1);
    if (!ev->text) {
        free(ev);
        return NULL;
    }
    if (len)
        memcpy(ev->text, text, len);
    ev->text[len] = '\0';
    ev->text_len = len;
    return ev;
}

static int on_sched_event(void *ud, const struct sched_event *sev)
{
    engine *e = ud;
    struct engine_event *ev;
    enum engine_event_kind kind = sev->kind == SCHED_EV_TOKEN ? ENGINE_EV_TOKEN : ENGINE_EV_DONE;
    /* A DONE event must get through: retry the small allocation.  A TOKEN
     * event that cannot be made is refused: the scheduler keeps its text
     * for the next event (sched_event_fn). */
    while (!(ev = event_new(kind, sev->id, sev->user, sev->text, sev->text_len))) {
        if (kind == ENGINE_EV_TOKEN)
            return -1;
        usleep(1000);
    }
    ev->token = sev->token;
    ev->n_prompt = sev->n_prompt;
    ev->n_cached = sev->n_cached;
    ev->n_generated = sev->n_generated;
    if (kind == ENGINE_EV_TOKEN && sev->has_logprob) {
        ev->has_logprob = true;
        ev->logprob = sev->logprob;
        ev->n_top = sev->n_top > SCHED_MAX_TOP_LOGPROBS ? SCHED_MAX_TOP_LOGPROBS : sev->n_top;
        if (ev->n_top > 0) {
            memcpy(ev->top_ids, sev->top_ids, (size_t)ev->n_top * sizeof *ev->top_ids);
            memcpy(ev->top_lps, sev->top_lps, (size_t)ev->n_top * sizeof *ev->top_lps);
        }
        /* Out of memory for the piece: the event still goes out with its
         * text (the output must not lose it), piece NULL telling the
         * consumer that this token's logprobs entry is lost. */
        if ((ev->piece = malloc(sev->piece_len + 1))) {
            memcpy(ev->piece, sev->piece, sev->piece_len);
            ev->piece[sev->piece_len] = '\0';
            ev->piece_len = sev->piece_len;
        }
    }
    if (kind == ENGINE_EV_DONE) {
        ev->finish = sev->finish;
        if (sev->finish == FINISH_ERROR) {
            ev->status = 500;
            ev->error = strdup(sev->error ? sev->error : "engine error");
        }
    }
    push_event(e, ev);
    return 0;
}

static void reject(engine *e, const struct cmd *c, int status, const char *msg)
{
    struct engine_event *ev;
    while (!(ev = event_new(ENGINE_EV_DONE, c->id, c->req.user, "", 0)))
        usleep(1000);
    ev->finish = FINISH_ERROR;
    ev->status = status;
    ev->error = strdup(msg);
    push_event(e, ev);
}

/* ---- engine thread: commands in ------------------------------------------------ */

static const char *vocab_piece(void *ud, int32_t id, size_t *len)
{
    const char *p = tokenizer_piece(ud, id, false, len);
    if (!p)
        *len = 0;
    return p ? p : "";
}

static bool vocab_is_eog(void *ud, int32_t id)
{
    return tokenizer_is_eog(ud, id);
}

static void last_prompt_clear(engine *e)
{
    free(e->last_prompt.text);
    free(e->last_prompt.spans);
    free(e->last_prompt.ids);
    memset(&e->last_prompt, 0, sizeof e->last_prompt);
}

/* c's prompt is the text last tokenized for its prompt group: a copy of
 * those ids in *ids (NULL when memory ran out: tokenize again). */
static bool last_prompt_reuse(engine *e, const struct cmd *c, int32_t **ids, size_t *n)
{
    if (!c->req.prompt_group || c->req.prompt_group != e->last_prompt.group ||
        c->req.tenant != e->last_prompt.tenant || c->req.parse_special != e->last_prompt.parse_special ||
        c->req.add_bos != e->last_prompt.add_bos || strcmp(c->prompt, e->last_prompt.text) ||
        (c->req.special_spans != NULL) != e->last_prompt.has_spans ||
        (size_t)c->req.n_special_spans != e->last_prompt.n_spans ||
        (e->last_prompt.n_spans && memcmp(c->spans, e->last_prompt.spans, e->last_prompt.n_spans * sizeof *c->spans)))
        return false;
    *ids = malloc((e->last_prompt.n + 1) * sizeof **ids);
    if (!*ids)
        return false;
    memcpy(*ids, e->last_prompt.ids, e->last_prompt.n * sizeof **ids);
    *n = e->last_prompt.n;
    return true;
}

/* Keep ids (n of them) as the tokens of c's prompt for its group's next
 * choices; without memory for the copy, the next choice tokenizes again. */
static void last_prompt_keep(engine *e, const struct cmd *c, const int32_t *ids, size_t n)
{
    last_prompt_clear(e);
    if (!c->req.prompt_group)
        return;
    const size_t n_spans = (size_t)c->req.n_special_spans;
    char *text = strdup(c->prompt);
    int32_t *copy = malloc((n + 1) * sizeof *copy);
    struct text_span *spans = malloc((n_spans + 1) * sizeof *spans);
    if (!text || !copy || !spans) {
        free(text);
        free(copy);
        free(spans);
        return;
    }
    if (n_spans)
        memcpy(spans, c->spans, n_spans * sizeof *spans);
    memcpy(copy, ids, n * sizeof *copy);
    e->last_prompt.group = c->req.prompt_group;
    e->last_prompt.tenant = c->req.tenant;
    e->last_prompt.parse_special = c->req.parse_special;
    e->last_prompt.add_bos = c->req.add_bos;
    e->last_prompt.has_spans = c->req.special_spans != NULL;
    e->last_prompt.spans = spans;
    e->last_prompt.n_spans = n_spans;
    e->last_prompt.text = text;
    e->last_prompt.ids = copy;
    e->last_prompt.n = n;
}

static void handle_submit(engine *e, struct cmd *c)
{
    int32_t *ids = NULL;
    size_t n = 0;
    int rc;
    const size_t len = c->prompt ? strlen(c->prompt) : 0;
    const size_t max_token = c->prompt && e->tok ? tokenizer_max_token_bytes(e->tok) : 0;
    if (max_token) {
        /* every byte with a token of its own is covered by some token, of
         * at most max_token bytes: past the context, refuse the text before
         * tokenizing it (~0.1 s per MB on this thread, every stream
         * waiting).  A byte without a token (a few control characters in
         * SmolLM2's vocabulary) may be dropped, so it does not count. */
        const size_t covered = tokenizer_bytes_with_tokens(e->tok, c->prompt, len);
        const int32_t n_ctx = sched_n_ctx(e->sched);
        if (n_ctx > 0 && covered / max_token > (size_t)n_ctx) {
            char msg[256];
            snprintf(msg, sizeof msg,
                     "prompt of %zu bytes is longer than the context of %d tokens (a token of this vocabulary "
                     "covers at most %zu bytes)", len, (int)n_ctx, max_token);
            reject(e, c, 400, msg);
            return;
        }
    }
    if (c->prompt && !last_prompt_reuse(e, c, &ids, &n)) {
        int32_t *body = NULL;
        size_t n_body = 0;
        rc = c->req.special_spans
                 ? tokenizer_encode_spans(e->tok, c->prompt, len, c->spans, (size_t)c->req.n_special_spans,
                                          &body, &n_body)
                 : tokenizer_encode(e->tok, c->prompt, len, c->req.parse_special, &body, &n_body);
        if (rc) {
            reject(e, c, rc == PS_ENOMEM ? 500 : 400, ps_error_last());
            return;
        }
        bool bos = c->req.add_bos && tokenizer_add_bos(e->tok) && tokenizer_bos(e->tok) >= 0;
        ids = malloc((n_body + 1) * sizeof *ids);
        if (!ids) {
            free(body);
            reject(e, c, 500, "out of memory");
            return;
        }
        if (bos)
            ids[n++] = tokenizer_bos(e->tok);
        if (n_body)
            memcpy(ids + n, body, n_body * sizeof *body);
        n += n_body;
        free(body);
        e->prompts_tokenized++;
        last_prompt_keep(e, c, ids, n);
    }
    struct sched_request r = {
        .id = c->id, .tenant = c->req.tenant, .priority = c->req.priority,
        .queued_since = c->req.queued_since, .prompt = ids ? ids : c->prompt_ids, .n_prompt = ids ? (int32_t)n : c->req.n_prompt_ids,
        .max_tokens = c->req.max_tokens, .sampling = c->req.sampling,
        .stop = (const char *const *)c->stop, .n_stop = c->req.n_stop,
        .ignore_eos = c->req.ignore_eos, .logprobs = c->req.logprobs,
        .top_logprobs = c->req.top_logprobs, .constraint = c->req.constraint,
        .logit_bias = c->bias, .n_logit_bias = c->req.n_logit_bias,
        .prompt_group = c->req.prompt_group, .user = c->req.user,
    };
    if (r.max_tokens <= 0)
        r.max_tokens = sched_n_ctx(e->sched) - r.n_prompt;
    if (r.max_tokens < 1)
        r.max_tokens = 1; /* sched_submit names the real problem: the prompt length */
    rc = sched_submit(e->sched, &r);
    free(ids);
    if (rc)
        reject(e, c, rc == PS_ENOMEM ? 500 : 400, ps_error_last());
}

static void update_stats(engine *e)
{
    struct engine_stats st;
    sched_get_stats(e->sched, &st.sched);
    st.n_ctx = sched_n_ctx(e->sched);
    st.prompts_tokenized = e->prompts_tokenized;
    pthread_mutex_lock(&e->stats_mu);
    e->stats = st;
    pthread_mutex_unlock(&e->stats_mu);
}

static void flush_events(engine *e)
{
    pthread_mutex_lock(&e->out_mu);
    bool any = e->out_head != NULL;
    pthread_mutex_unlock(&e->out_mu);
    if (any)
        wake(e->out_fd);
}

static void *engine_main(void *arg)
{
    engine *e = arg;
    for (;;) {
        drain(e->in_fd);
        pthread_mutex_lock(&e->in_mu);
        struct cmd *cmds = e->in_head;
        e->in_head = e->in_tail = NULL;
        bool stop = e->stop;
        pthread_mutex_unlock(&e->in_mu);

        while (cmds) {
            struct cmd *c = cmds;
            cmds = c->next;
            switch (c->kind) {
            case CMD_SUBMIT: handle_submit(e, c); break;
            case CMD_CANCEL: sched_cancel(e->sched, c->id); break;
            case CMD_CANCEL_ALL: sched_cancel_all(e->sched); break;
            }
            cmd_free(c);
        }
        if (stop)
            break;
        if (sched_has_work(e->sched)) {
            int32_t n;
            sched_step(e->sched, &n); /* a failure finished the batch's requests */
            update_stats(e);
            flush_events(e);
            continue;
        }
        update_stats(e);
        flush_events(e);
        struct pollfd pfd = { .fd = e->in_fd, .events = POLLIN };
        while (poll(&pfd, 1, -1) < 0 && errno == EINTR)
            ;
    }
    return NULL;
}

/* ---- caller side ------------------------------------------------------------------ */

/* Append the chain head .. tail (linked by next) in one splice: the engine
 * thread sees all of it at once. */
static void post_chain(engine *e, struct cmd *head, struct cmd *tail)
{
    pthread_mutex_lock(&e->in_mu);
    if (e->in_tail)
        e->in_tail->next = head;
    else
        e->in_head = head;
    e->in_tail = tail;
    pthread_mutex_unlock(&e->in_mu);
    wake(e->in_fd);
}

static void post(engine *e, struct cmd *c)
{
    post_chain(e, c, c);
}

/* A submit command with its deep copy of req, numbered; not posted. */
static int cmd_build(engine *e, const struct engine_request *req, struct cmd **out)
{
    *out = NULL;
    struct cmd *c = calloc(1, sizeof *c);
    if (!c)
        return ps_error_set(PS_ENOMEM, "engine: out of memory");
    c->kind = CMD_SUBMIT;
    c->id = atomic_fetch_add(&e->next_id, 1);
    c->req = *req;
    c->req.prompt = NULL;
    c->req.prompt_ids = NULL;
    c->req.stop = NULL;
    c->req.logit_bias = NULL;
    c->req.constraint = (struct token_constraint){ 0 };
    if (!req->special_spans)
        c->req.n_special_spans = 0; /* a count without spans means none */
    if (req->special_spans && (req->parse_special || req->n_special_spans < 0 || !req->prompt)) {
        cmd_free(c);
        return ps_error_set(PS_EINVAL, "engine: special_spans need a text prompt, a count >= 0 and no "
                            "parse_special");
    }
    if (req->prompt && !(c->prompt = strdup(req->prompt)))
        goto oom;
    if (req->special_spans) {
        const size_t n_spans = (size_t)req->n_special_spans;
        if (!(c->spans = malloc((n_spans + 1) * sizeof *c->spans)))
            goto oom;
        if (n_spans)
            memcpy(c->spans, req->special_spans, n_spans * sizeof *c->spans);
        c->req.special_spans = c->spans;
    }
    if (!req->prompt && req->n_prompt_ids > 0) {
        c->prompt_ids = malloc((size_t)req->n_prompt_ids * sizeof *c->prompt_ids);
        if (!c->prompt_ids)
            goto oom;
        memcpy(c->prompt_ids, req->prompt_ids, (size_t)req->n_prompt_ids * sizeof *c->prompt_ids);
    }
    if (req->n_stop > 0) {
        c->stop = calloc((size_t)req->n_stop, sizeof *c->stop);
        if (!c->stop)
            goto oom;
        for (int32_t i = 0; i < req->n_stop; i++)   /* a NULL entry stays NULL: no stop (the scheduler skips it) */
            if (req->stop[i] && !(c->stop[i] = strdup(req->stop[i])))
                goto oom;
    }
    if (req->n_logit_bias > 0) {
        if (req->n_logit_bias > SAMPLER_MAX_BIAS) {
            cmd_free(c);
            return ps_error_set(PS_EINVAL, "engine: %d logit biases (at most %d)", (int)req->n_logit_bias,
                                SAMPLER_MAX_BIAS);
        }
        if (!(c->bias = malloc((size_t)req->n_logit_bias * sizeof *c->bias)))
            goto oom;
        memcpy(c->bias, req->logit_bias, (size_t)req->n_logit_bias * sizeof *c->bias);
    }
    if (req->constraint.ops) {
        if (req->constraint.ops->retain)
            req->constraint.ops->retain(req->constraint.ctx);
        c->req.constraint = req->constraint;
    }
    *out = c;
    return PS_OK;
oom:
    cmd_free(c);
    return ps_error_set(PS_ENOMEM, "engine: out of memory");
}

int engine_submit_many(engine *e, const struct engine_request *reqs, int32_t n, uint64_t *ids)
{
    struct cmd *head = NULL, *tail = NULL;
    for (int32_t i = 0; i < n; i++) {
        struct cmd *c;
        int rc = cmd_build(e, &reqs[i], &c);
        if (rc) {
            while (head) {
                struct cmd *next = head->next;
                cmd_free(head);
                head = next;
            }
            return rc;
        }
        ids[i] = c->id;
        if (tail)
            tail->next = c;
        else
            head = c;
        tail = c;
    }
    if (head)
        post_chain(e, head, tail);
    return PS_OK;
}

int engine_submit(engine *e, const struct engine_request *req, uint64_t *id)
{
    return engine_submit_many(e, req, 1, id);
}

int engine_cancel(engine *e, uint64_t id)
{
    struct cmd *c = calloc(1, sizeof *c);
    if (!c)
        return ps_error_set(PS_ENOMEM, "engine: out of memory");
    c->kind = CMD_CANCEL;
    c->id = id;
    post(e, c);
    return PS_OK;
}

void engine_cancel_all(engine *e)
{
    struct cmd *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->kind = CMD_CANCEL_ALL;
    post(e, c);
}

int engine_events_fd(const engine *e)
{
    return e->out_fd;
}

struct engine_event *engine_take_events(engine *e)
{
    drain(e->out_fd);
    pthread_mutex_lock(&e->out_mu);
    struct engine_event *ev = e->out_head;
    e->out_head = e->out_tail = NULL;
    pthread_mutex_unlock(&e->out_mu);
    return ev;
}

void engine_get_stats(engine *e, struct engine_stats *st)
{
    pthread_mutex_lock(&e->stats_mu);
    *st = e->stats;
    pthread_mutex_unlock(&e->stats_mu);
}

int engine_create(const struct engine_config *cfg, backend *be, const tokenizer *tok, engine **out)
{
    *out = NULL;
    int rc;
    struct engine *e = calloc(1, sizeof *e);
    if (!e)
        return ps_error_set(PS_ENOMEM, "engine: out of memory");
    e->be = be;
    e->tok = tok;
    e->cfg = *cfg;
    e->in_fd = e->out_fd = -1;
    atomic_init(&e->next_id, 1);
    pthread_mutex_init(&e->in_mu, NULL);
    pthread_mutex_init(&e->out_mu, NULL);
    pthread_mutex_init(&e->stats_mu, NULL);
    e->in_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    e->out_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e->in_fd < 0 || e->out_fd < 0) {
        rc = ps_error_set(PS_EIO, "engine: eventfd: %s", strerror(errno));
        goto fail;
    }
    struct sched_config sc = { .max_seqs = cfg->max_seqs, .max_batch_tokens = cfg->max_batch_tokens,
                               .n_ctx = cfg->n_ctx, .prefix_cache = cfg->prefix_cache,
                               .mask_thread = cfg->mask_thread,
                               .device_sample = cfg->device_sample };
    struct sched_vocab vocab = { (void *)tok, vocab_piece, vocab_is_eog };
    rc = sched_create(&sc, be, tok ? &vocab : NULL, on_sched_event, e, &e->sched);
    if (rc)
        goto fail;
    update_stats(e);
    if (pthread_create(&e->thread, NULL, engine_main, e)) {
        rc = ps_error_set(PS_EINTERNAL, "engine: cannot start the engine thread");
        goto fail;
    }
    e->thread_started = true;
    *out = e;
    return PS_OK;
fail:
    engine_free(e);
    return rc;
}

void engine_free(engine *e)
{
    if (!e)
        return;
    if (e->thread_started) {
        pthread_mutex_lock(&e->in_mu);
        e->stop = true;
        pthread_mutex_unlock(&e->in_mu);
        wake(e->in_fd);
        pthread_join(e->thread, NULL);
    }
    sched_free(e->sched); /* cancels the rest: DONE events land in the queue */
    struct cmd *c = e->in_head;
    while (c) {
        struct cmd *n = c->next;
        cmd_free(c);
        c = n;
    }
    engine_events_free(e->out_head);
    if (e->in_fd >= 0)
        close(e->in_fd);
    if (e->out_fd >= 0)
        close(e->out_fd);
    pthread_mutex_destroy(&e->stats_mu);
    pthread_mutex_destroy(&e->out_mu);
    pthread_mutex_destroy(&e->in_mu);
    last_prompt_clear(e);
    free(e);
}
