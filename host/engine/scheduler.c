/* scheduler.c - continuous batching, chunked prefill, preemption by
 * recompute, prefix sharing.  The state machine is documented in
 * scheduler.h. */
#include "scheduler.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/grow.h"
#include "../common/status.h"
#include "kv_blocks.h"
#include "prefix_cache.h"

struct seq {
    uint64_t       id;
    uint32_t       tenant;
    int32_t        priority;
    int64_t        since;       /* queued_since (ns), kept across preemption */
    uint64_t       arrival;     /* submit order, kept across preemption    */
    uint64_t       group;       /* prompt group (scheduler.h), 0: none     */
    enum seq_state state;
    void          *user;

    int32_t       *tokens;      /* [cap_tokens] prompt then generated      */
    int32_t        n_tokens, cap_tokens;
    int32_t        n_prompt;
    int32_t        n_computed;  /* tokens whose K/V is in the cache        */
    int32_t        max_tokens;
    int32_t        n_generated;
    bool           ignore_eos;

    int32_t       *blocks;      /* [cap_blocks] block table                */
    int32_t        n_blocks, cap_blocks;
    int32_t        n_hashed;    /* leading full blocks offered to the cache */
    uint64_t       last_hash;   /* chain hash of block n_hashed-1 (or seed) */

    int32_t        n_cached;    /* prefix hit tokens at first admission    */
    bool           admitted_once;
    int32_t        n_preempted;

    sampler       *smp;
    struct backend_sample_params bsp; /* the request's sampling for a backend
                                   that samples itself (step set per step) */
    bool           host_only;   /* penalties, logit biases or logprobs:
                                   sampled on the host always              */
    bool           penalized;   /* penalties or logit biases: sampling
                                   rewrites the logits row                 */
    bool           logprobs;    /* TOKEN events carry the logprob          */
    int32_t        n_top;       /* and this many alternatives (top_logprobs) */
    const struct token_constraint_ops *cops; /* NULL: unconstrained      */
    void          *cm;          /* constraint matcher                      */
    uint32_t      *mask;        /* [mask_words] for the next sample        */
    int            mask_rc;     /* fill_mask status of this step           */
    char         **stop;
    int32_t        n_stop;
    char          *text;        /* held-back text                          */
    size_t         text_len, text_cap;

    /* per-step scratch */
    bool           in_plan;
    int32_t        take;
};

struct sched {
    struct sched_config cfg;
    backend            *be;
    struct sched_vocab  vocab;
    sched_event_fn      on_event;
    void               *ud;
    int32_t             bs, n_vocab;
    size_t              mask_words;
    kv_blocks          *kv;
    prefix_cache       *pc;

    struct seq        **running; /* [max_seqs] sorted by priority desc, arrival asc */
    int32_t             n_running;
    struct seq        **waiting; /* sorted the same way */
    int32_t             n_waiting, cap_waiting;
    struct seq        **parked;  /* [max_seqs] finished prompt-group members
                                    still holding their blocks for waiting
                                    members of their group (park_finished) */
    int32_t             n_parked;
    uint64_t            next_arrival;

    struct batch_seq   *plan_seqs; /* [max_seqs] */
    struct seq        **plan_of;   /* [max_seqs] */
    float              *logits;    /* [max_seqs][n_vocab] */
    float              *lp_row;    /* [n_vocab] a logprobs row before the
                                      penalties change it */
    int32_t             top_ids[SCHED_MAX_TOP_LOGPROBS]; /* the alternatives of */
    float               top_lps[SCHED_MAX_TOP_LOGPROBS]; /* the token being
                                      accepted (seq_sample_host -> the TOKEN
                                      event of seq_accept_token)          */
    bool                dev_sample; /* the backend samples itself and cfg allows it */
    struct backend_sample_params *dev_params; /* [max_seqs] rows of a device-sampled step */
    int32_t            *dev_tokens; /* [max_seqs] its sampled ids             */
    int32_t            *match_buf; /* [max blocks per seq] */
    uint64_t           *hash_buf;

    struct sched_stats  st;

    /* per-step scratch (sched_step) */
    int32_t             budget;      /* tokens left in this step's batch  */
    int32_t             admit_floor; /* admit only priorities above this:
                                        raised by every preemption so a
                                        victim is not re-admitted (and
                                        recomputed) in the step that
                                        preempted it                      */

    /* Mask helper thread (cfg.mask_thread): the engine thread posts a step
     * (posted++), runs backend_forward, then waits for finished == posted.
     * The helper touches only the planned sequences' matchers and masks,
     * which nothing else uses meanwhile, and the mask counters in st. */
    bool                mask_overlap;
    bool                mw_started, mw_stop;
    pthread_t           mw_thread;
    pthread_mutex_t     mw_mu;
    pthread_cond_t      mw_cv;
    uint64_t            mw_posted, mw_finished;
    int32_t             mw_n_plan;
    char                mask_err[256]; /* first fill failure of the step */
};

const char *finish_reason_str(enum finish_reason r)
{
    switch (r) {
    case FINISH_STOP: return "stop";
    case FINISH_LENGTH: return "length";
    case FINISH_CANCELLED: return "cancelled";
    case FINISH_ERROR: return "error";
    default: return "none";
    }
}

/* ---- text: UTF-8 and stop-string hold-back -------------------------------- */

/* Bytes at the end of t[0..len) that form an incomplete UTF-8 character. */
static size_t utf8_incomplete_tail(const char *t, size_t len)
{
    for (size_t k = 1; k <= 3 && k <= len; k++) {
        unsigned char c = (unsigned char)t[len - k];
        if ((c & 0xC0) == 0x80)
            continue; /* continuation byte: look further back */
        size_t need = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
        return need > k ? k : 0;
    }
    return 0;
}

bool sched_text_scan(const char *t, size_t len, const char *const *stop, int32_t n_stop,
                     size_t *stop_at, size_t *safe)
{
    size_t best = (size_t)-1;
    for (int32_t i = 0; i < n_stop; i++) {
        size_t sl = strlen(stop[i]);
        if (!sl || sl > len)
            continue;
        for (size_t p = 0; p + sl <= len && p < best; p++)
            if (!memcmp(t + p, stop[i], sl)) {
                best = p;
                break;
            }
    }
    if (best != (size_t)-1) {
        *stop_at = best;
        *safe = best;
        return true;
    }
    size_t hold = 0;
    for (int32_t i = 0; i < n_stop; i++) {
        size_t sl = strlen(stop[i]);
        /* longest proper prefix of stop[i] that is a suffix of t */
        for (size_t k = (sl - 1 < len ? sl - 1 : len); k > hold; k--)
            if (!memcmp(t + len - k, stop[i], k)) {
                hold = k;
                break;
            }
    }
    size_t u = utf8_incomplete_tail(t, len);
    if (u > hold)
        hold = u;
    *safe = len - hold;
    return false;
}

static int text_append(struct seq *q, const char *p, size_t n)
{
    if (q->text_len + n + 1 > q->text_cap) {
        char *t = ps_grow(q->text, &q->text_cap, q->text_len + n + 1, 1, 64);
        if (!t)
            return ps_error_set(PS_ENOMEM, "scheduler: out of memory for text");
        q->text = t;
    }
    memcpy(q->text + q->text_len, p, n);
    q->text_len += n;
    q->text[q->text_len] = '\0';
    return PS_OK;
}

static void text_consume(struct seq *q, size_t n)
{
    if (!n)
        return; /* q->text may still be NULL */
    memmove(q->text, q->text + n, q->text_len - n);
    q->text_len -= n;
}

/* ---- sequence bookkeeping -------------------------------------------------- */

static int seq_cmp(const struct seq *a, const struct seq *b)
{
    if (a->priority != b->priority)
        return a->priority > b->priority ? -1 : 1;
    if (a->since != b->since)
        return a->since < b->since ? -1 : 1;
    return a->arrival < b->arrival ? -1 : a->arrival > b->arrival ? 1 : 0;
}

static void list_insert(struct seq **list, int32_t *n, struct seq *q)
{
    int32_t i = *n;
    while (i > 0 && seq_cmp(q, list[i - 1]) < 0) {
        list[i] = list[i - 1];
        i--;
    }
    list[i] = q;
    (*n)++;
}

static bool list_remove(struct seq **list, int32_t *n, const struct seq *q)
{
    for (int32_t i = 0; i < *n; i++)
        if (list[i] == q) {
            memmove(list + i, list + i + 1, (size_t)(*n - i - 1) * sizeof *list);
            (*n)--;
            return true;
        }
    return false;
}

static void seq_destroy(struct seq *q)
{
    if (!q)
        return;
    for (int32_t i = 0; i < q->n_stop; i++)
        free(q->stop[i]);
    free(q->stop);
    free(q->text);
    free(q->blocks);
    free(q->tokens);
    sampler_free(q->smp);
    if (q->cm)
        q->cops->matcher_free(q->cm);
    free(q->mask);
    free(q);
}

static void seq_release_blocks(sched *s, struct seq *q)
{
    for (int32_t i = 0; i < q->n_blocks; i++)
        kv_blocks_unref(s->kv, q->blocks[i]);
    q->n_blocks = 0;
    q->n_computed = 0;
    q->n_hashed = 0;
    q->last_hash = prefix_cache_seed(q->tenant);
}

/* ---- parked group members (scheduler.h, prompt groups) ------------------------ */

static bool same_group(const struct seq *a, const struct seq *b)
{
    return a != b && a->group && a->group == b->group && a->tenant == b->tenant;
}

/* A member of a prompt group that finishes normally while others of its
 * group wait keeps its blocks (parked: its DONE goes out as usual), so
 * that they share its prompt even when it ends in the step that computed
 * it (max_tokens 1, an immediate end of text).  One per group.  Parked
 * sequences are released at the end of the next admission pass
 * (sched_step), or as soon as a block allocation would fail. */
static bool park_finished(sched *s, struct seq *q, enum finish_reason why)
{
    if (!q->group || (why != FINISH_STOP && why != FINISH_LENGTH) || !q->n_blocks ||
        q->n_computed < q->n_prompt - 1 || s->n_parked >= s->cfg.max_seqs)
        return false;
    for (int32_t i = 0; i < s->n_parked; i++)
        if (same_group(s->parked[i], q))
            return false;
    for (int32_t i = 0; i < s->n_waiting; i++)
        if (same_group(s->waiting[i], q)) {
            s->parked[s->n_parked++] = q;
            return true;
        }
    return false;
}

static void parked_release(sched *s)
{
    while (s->n_parked > 0) {
        struct seq *q = s->parked[--s->n_parked];
        seq_release_blocks(s, q);
        seq_destroy(q);
    }
}

/* prefix_cache_alloc, releasing parked sequences first when nothing is free. */
static int block_alloc(sched *s, int32_t *b)
{
    int rc = prefix_cache_alloc(s->pc, b);
    if (rc == PS_EFULL && s->n_parked > 0) {
        parked_release(s);
        rc = prefix_cache_alloc(s->pc, b);
    }
    return rc;
}

static int emit(sched *s, const struct sched_event *ev)
{
    return s->on_event ? s->on_event(s->ud, ev) : 0;
}

/* Any state -> FINISHED: emit DONE with the held-back text (not when a stop
 * string matched: the caller trimmed it), release and free. */
static void sched_finish(sched *s, struct seq *q, enum finish_reason why, const char *error)
{
    if (q->state == SEQ_RUNNING)
        list_remove(s->running, &s->n_running, q);
    else if (q->state == SEQ_WAITING || q->state == SEQ_PREEMPTED)
        list_remove(s->waiting, &s->n_waiting, q);
    q->state = SEQ_FINISHED;
    const bool parked = park_finished(s, q, why);
    if (!parked)
        seq_release_blocks(s, q);
    struct sched_event ev = {
        .kind = SCHED_EV_DONE, .id = q->id, .user = q->user, .token = -1,
        .text = q->text ? q->text : "", .text_len = why == FINISH_CANCELLED ? 0 : q->text_len,
        .finish = why, .n_prompt = q->n_prompt, .n_cached = q->n_cached,
        .n_generated = q->n_generated, .n_preempted = q->n_preempted, .error = error,
    };
    (void)emit(s, &ev); /* a DONE event is always taken */
    if (!parked)
        seq_destroy(q);
}

/* RUNNING -> PREEMPTED: give back every block; keep tokens and sampler. */
static void sched_preempt(sched *s, struct seq *q)
{
    list_remove(s->running, &s->n_running, q);
    seq_release_blocks(s, q);
    q->state = SEQ_PREEMPTED;
    q->n_preempted++;
    s->st.preemptions++;
    list_insert(s->waiting, &s->n_waiting, q);
}

/* Grow q's block table to hold `n_pos` positions; PS_EFULL when no block is
 * free or evictable (blocks already added stay). */
static int seq_grow(sched *s, struct seq *q, int32_t n_pos)
{
    while ((int64_t)q->n_blocks * s->bs < n_pos) {
        int32_t b;
        int rc = block_alloc(s, &b);
        if (rc)
            return rc;
        q->blocks[q->n_blocks++] = b;
    }
    return PS_OK;
}

/* Copy-on-write: the block that position n_computed falls in must be ours
 * alone before the backend writes into it. */
static int seq_make_writable(sched *s, struct seq *q)
{
    int32_t bi = q->n_computed / s->bs;
    if (bi >= q->n_blocks || kv_blocks_refcount(s->kv, q->blocks[bi]) <= 1)
        return PS_OK;
    int32_t nb;
    int rc = block_alloc(s, &nb);
    if (rc)
        return rc;
    rc = backend_copy_block(s->be, q->blocks[bi], nb);
    if (rc) {
        kv_blocks_unref(s->kv, nb);
        return rc;
    }
    kv_blocks_unref(s->kv, q->blocks[bi]);
    q->blocks[bi] = nb;
    s->st.cow_copies++;
    return PS_OK;
}

/* The running sequence to preempt so that q can go on: the last one in
 * priority order (lowest priority, latest arrival) among those ordered after
 * q, in this step's batch or not.  Never one ordered before q: an
 * equal-priority earlier arrival or a higher priority is not preempted for
 * q (q waits instead), so a preempted sequence is only ever displaced by
 * sequences ahead of it, which finish (no preemption loops). */
static struct seq *pick_victim(sched *s, const struct seq *q)
{
    struct seq *v = s->n_running > 0 ? s->running[s->n_running - 1] : NULL;
    return v && v != q && seq_cmp(v, q) > 0 ? v : NULL;
}

/* Take v out of this step's batch (its tokens go back to the budget). */
static void plan_remove(sched *s, struct seq *v, int32_t *n_plan)
{
    for (int32_t i = 0; i < *n_plan; i++)
        if (s->plan_of[i] == v) {
            memmove(s->plan_of + i, s->plan_of + i + 1, (size_t)(*n_plan - i - 1) * sizeof *s->plan_of);
            (*n_plan)--;
            s->budget += v->take;
            break;
        }
    v->in_plan = false;
    v->take = 0;
}

/* Preempt v, first taking it out of this step's batch when it is in it.
 * Sequences of v's priority or lower are not admitted again in this step. */
static void preempt_victim(sched *s, struct seq *v, int32_t *n_plan)
{
    if (v->in_plan)
        plan_remove(s, v, n_plan);
    if (v->priority > s->admit_floor)
        s->admit_floor = v->priority;
    sched_preempt(s, v);
}

static void plan_add(sched *s, struct seq *q, int32_t take, int32_t *n_plan)
{
    q->in_plan = true;
    q->take = take;
    s->plan_of[*n_plan] = q;
    (*n_plan)++;
}

/* Schedule up to `budget` tokens of running sequence q (decode or prefill
 * chunk).  Returns tokens taken (0: q was preempted or finished). */
static int32_t schedule_running(sched *s, struct seq *q, int32_t budget, int32_t *n_plan)
{
    int32_t need = q->n_tokens - q->n_computed;
    int32_t take = need < budget ? need : budget;
    for (;;) {
        int rc = seq_make_writable(s, q);
        if (!rc) {
            rc = seq_grow(s, q, q->n_computed + take);
            if (!rc)
                break;
            int32_t cap = q->n_blocks * s->bs - q->n_computed;
            if (cap >= 1 && rc == PS_EFULL) { /* a shorter prefill chunk fits */
                take = cap < take ? cap : take;
                break;
            }
        }
        struct seq *v = rc == PS_EFULL ? pick_victim(s, q) : NULL;
        if (v) {
            preempt_victim(s, v, n_plan);
            continue;
        }
        if (rc == PS_EFULL && s->n_running > 1) { /* sequences ahead of q hold the blocks */
            if (q->in_plan)
                plan_remove(s, q, n_plan);
            if (q->priority > s->admit_floor)
                s->admit_floor = q->priority;
            sched_preempt(s, q);
            return 0;
        }
        sched_finish(s, q, FINISH_ERROR, rc == PS_EFULL ? "KV cache exhausted by one sequence"
                                                         : ps_error_last());
        return 0;
    }
    plan_add(s, q, take, n_plan);
    return take;
}

/* Blocks that could be handed out now: free plus idle cached. */
static int32_t blocks_available(const sched *s)
{
    return kv_blocks_n_free(s->kv) + prefix_cache_n_idle(s->pc);
}

/* ---- prompt groups (scheduler.h) ---------------------------------------------- */

/* The running or parked member of q's prompt group whose computed tokens
 * share the longest prefix with q's tokens; *n_share: that prefix, capped
 * at q->n_tokens - 1 (one token must run to give logits).  NULL when no
 * such member shares a token. */
static struct seq *group_donor(const sched *s, const struct seq *q, int32_t *n_share)
{
    struct seq *best = NULL;
    int32_t best_n = 0;
    const int32_t cap = q->n_tokens - 1;
    for (int32_t i = 0; i < s->n_running + s->n_parked; i++) {
        struct seq *d = i < s->n_running ? s->running[i] : s->parked[i - s->n_running];
        if (!same_group(d, q))
            continue;
        int32_t lim = d->n_computed < cap ? d->n_computed : cap, n = 0;
        while (n < lim && d->tokens[n] == q->tokens[n])
            n++;
        if (n > best_n) {
            best = d;
            best_n = n;
        }
    }
    *n_share = best_n;
    return best;
}

/* q waits for its group: a member is running but has not computed q's
 * prompt (less its last token) yet, so admitting q now would compute the
 * prompt a second time. */
static bool group_waits(const sched *s, const struct seq *q)
{
    if (!q->group)
        return false;
    bool prefilling = false;
    for (int32_t i = 0; i < s->n_parked; i++)
        if (same_group(s->parked[i], q))
            return false; /* parked members have computed their prompt */
    for (int32_t i = 0; i < s->n_running; i++) {
        const struct seq *d = s->running[i];
        if (!same_group(d, q))
            continue;
        if (d->n_computed >= q->n_prompt - 1)
            return false;
        prefilling = true;
    }
    return prefilling;
}

/* WAITING/PREEMPTED -> RUNNING with the first chunk scheduled.  Returns
 * tokens taken; 0 when it does not fit now (q stays waiting, untouched).
 * whole: no shorter chunk for lack of blocks (the caller would rather
 * preempt lower priorities than prefill q piecemeal).  The computed prefix
 * comes from the prefix cache (whole blocks) or from a running member of
 * q's prompt group (any length: a partial last block is copied before q
 * writes into it), whichever is longer. */
static int32_t sched_admit(sched *s, struct seq *q, int32_t budget, bool whole, int32_t *n_plan)
{
    int32_t matched = 0;
    if (s->cfg.prefix_cache) {
        /* at least one token must run to give logits */
        int32_t max_blocks = (q->n_tokens - 1) / s->bs;
        matched = prefix_cache_match(s->pc, q->tenant, q->tokens, q->n_tokens, max_blocks,
                                     s->match_buf, s->hash_buf);
    }
    int32_t n_comp = matched * s->bs, n_share = 0;
    struct seq *donor = q->group ? group_donor(s, q, &n_share) : NULL;
    const bool shared = donor && n_share >= n_comp;
    if (shared) {
        for (int32_t i = 0; i < matched; i++)
            kv_blocks_unref(s->kv, s->match_buf[i]);
        matched = (n_share + s->bs - 1) / s->bs;
        for (int32_t i = 0; i < matched; i++) {
            s->match_buf[i] = donor->blocks[i];
            kv_blocks_ref(s->kv, s->match_buf[i]);
        }
        n_comp = n_share;
    }
    const int32_t cow = n_comp % s->bs ? 1 : 0; /* the partial last block, copied */
    int32_t take = q->n_tokens - n_comp < budget ? q->n_tokens - n_comp : budget;
    int32_t need_blocks = (n_comp + take + s->bs - 1) / s->bs - matched + cow;
    /* Keep a block of head-room per running sequence so admissions do not
     * immediately force preemptions of the decodes already running. */
    int32_t avail = blocks_available(s) - s->n_running;
    if (need_blocks > avail) {
        int32_t fit = avail - cow > 0 ? (matched + avail - cow) * s->bs - n_comp : 0;
        if (fit < 1 || whole) {
            for (int32_t i = 0; i < matched; i++)
                kv_blocks_unref(s->kv, s->match_buf[i]);
            return 0;
        }
        take = fit < take ? fit : take;
    }
    list_remove(s->waiting, &s->n_waiting, q);
    memcpy(q->blocks, s->match_buf, (size_t)matched * sizeof *q->blocks);
    q->n_blocks = matched;
    q->n_computed = n_comp;
    /* shared blocks are hashed again from the tokens when published (the
     * cache keeps the entries it has) */
    q->n_hashed = shared ? 0 : matched;
    q->last_hash = matched && !shared ? s->hash_buf[matched - 1] : prefix_cache_seed(q->tenant);
    if (!q->admitted_once) {
        q->n_cached = shared ? 0 : n_comp < q->n_prompt ? n_comp : q->n_prompt;
        q->admitted_once = true;
    }
    if (shared)
        s->st.group_shared_tokens += (uint64_t)n_comp;
    else
        s->st.prefix_hit_tokens += (uint64_t)n_comp;
    q->state = SEQ_RUNNING;
    list_insert(s->running, &s->n_running, q);
    if (seq_make_writable(s, q) || seq_grow(s, q, n_comp + take)) {
        /* cannot happen after the availability check (but a failed block
         * copy); undo cleanly */
        sched_preempt(s, q);
        q->n_preempted--;
        s->st.preemptions--;
        return 0;
    }
    plan_add(s, q, take, n_plan);
    return take;
}

/* Offer q's newly completed full blocks to the prefix cache. */
static void seq_publish_blocks(sched *s, struct seq *q)
{
    if (!s->cfg.prefix_cache)
        return;
    int32_t full = q->n_computed / s->bs;
    while (q->n_hashed < full) {
        const int32_t *tk = q->tokens + (size_t)q->n_hashed * s->bs;
        uint64_t h = prefix_cache_hash(q->last_hash, tk, s->bs);
        prefix_cache_insert(s->pc, q->last_hash, h, tk, q->blocks[q->n_hashed]);
        q->last_hash = h;
        q->n_hashed++;
    }
}

/* Take token `tok`, chosen for q by the host sampler or by the backend
 * (logprob: its log-probability when q->logprobs; n_top: the alternatives
 * in s->top_ids / s->top_lps, 0 without): the matcher accepts it (an error
 * finishes q: a token the mask did not allow), it joins the penalty
 * history and the sequence, then the stop rules run (EOG, stop strings,
 * matcher done, max_tokens, context) and the TOKEN event goes out.  q may
 * be finished (and freed) on return. */
static void seq_accept_token(sched *s, struct seq *q, int32_t tok, float logprob, int32_t n_top)
{
    if (q->cm && q->cops->accept(q->cm, tok)) {
        sched_finish(s, q, FINISH_ERROR, ps_error_last());
        return;
    }
    sampler_accept(q->smp, tok);
    q->tokens[q->n_tokens++] = tok;
    q->n_generated++;
    s->st.generated_tokens++;

    /* Under a constraint EOG is only allowed once the output is complete,
     * so it ends the sequence even with ignore_eos. */
    bool eog = (!q->ignore_eos || q->cm) && s->vocab.is_eog && s->vocab.is_eog(s->vocab.ud, tok);
    if (eog) {
        struct sched_event ev = { .kind = SCHED_EV_TOKEN, .id = q->id, .user = q->user,
                                  .token = tok, .text = "", .text_len = 0, .piece = "", .piece_len = 0,
                                  .has_logprob = q->logprobs, .logprob = logprob,
                                  .top_ids = s->top_ids, .top_lps = s->top_lps, .n_top = n_top,
                                  .n_prompt = q->n_prompt, .n_cached = q->n_cached, .n_generated = q->n_generated };
        (void)emit(s, &ev);   /* no text; a logprobs record is not kept for EOG */
        sched_finish(s, q, FINISH_STOP, NULL);
        return;
    }
    size_t plen = 0;
    const char *piece = s->vocab.piece ? s->vocab.piece(s->vocab.ud, tok, &plen) : NULL;
    if (!piece)
        plen = 0;
    if (piece && plen && text_append(q, piece, plen)) {
        sched_finish(s, q, FINISH_ERROR, ps_error_last());
        return;
    }
    size_t stop_at = 0, safe = 0;
    bool stopped = q->text_len &&
        sched_text_scan(q->text, q->text_len, (const char *const *)q->stop, q->n_stop, &stop_at, &safe);
    if (!q->text_len)
        safe = 0;
    struct sched_event ev = { .kind = SCHED_EV_TOKEN, .id = q->id, .user = q->user,
                              .token = tok, .text = q->text ? q->text : "", .text_len = safe,
                              .piece = plen ? piece : "", .piece_len = plen,
                              .has_logprob = q->logprobs, .logprob = logprob,
                              .top_ids = s->top_ids, .top_lps = s->top_lps, .n_top = n_top,
                              .n_prompt = q->n_prompt, .n_cached = q->n_cached, .n_generated = q->n_generated };
    const bool lost = emit(s, &ev) != 0;
    if (lost) {
        /* not delivered: its text stays held back for the next event */
        if (q->logprobs) {
            sched_finish(s, q, FINISH_ERROR, "out of memory for a token event (its logprobs are lost)");
            return;
        }
        if (stopped)
            q->text_len = safe; /* DONE carries what precedes the stop string */
        safe = 0;
    }
    text_consume(q, safe);
    if (stopped) {
        if (!lost)
            q->text_len = 0; /* drop the stop string and whatever followed */
        sched_finish(s, q, FINISH_STOP, NULL);
    } else if (q->cm && q->cops->is_done(q->cm)) {
        sched_finish(s, q, FINISH_STOP, NULL);
    } else if (q->n_generated >= q->max_tokens || q->n_tokens >= s->cfg.n_ctx) {
        sched_finish(s, q, FINISH_LENGTH, NULL);
    }
}

/* Host path: choose q's next token from its logits row (penalties, mask,
 * draw sampler_next_draw), then seq_accept_token.  A logprobs sequence's
 * logprob and alternatives are read from the row as the backend gave it
 * (the alternatives before sampling): the penalties rewrite the row in
 * place, so a penalized one is copied first. */
static void seq_sample_host(sched *s, struct seq *q, float *row)
{
    int32_t tok;
    if (q->cm && q->mask_rc) {
        sched_finish(s, q, FINISH_ERROR, s->mask_err);
        return;
    }
    /* a NaN / inf logit: the model is broken, fail this request alone */
    if (sampler_logits_check(row, s->n_vocab)) {
        sched_finish(s, q, FINISH_ERROR, ps_error_last());
        return;
    }
    const float *raw = row;
    double norm = 0.0;
    int32_t n_top = 0;
    if (q->logprobs) {
        norm = sampler_log_norm(row, s->n_vocab);
        if (q->penalized) {
            memcpy(s->lp_row, row, (size_t)s->n_vocab * sizeof *row);
            raw = s->lp_row;
        }
        n_top = sampler_top_logprobs(raw, s->n_vocab, norm, q->n_top, s->top_ids, s->top_lps);
    }
    if (sampler_sample(q->smp, row, q->cm ? q->mask : NULL, &tok)) {
        sched_finish(s, q, FINISH_ERROR, ps_error_last());
        return;
    }
    seq_accept_token(s, q, tok, q->logprobs ? sampler_logprob(raw, norm, tok) : 0.0f, n_top);
}

/* Device path: the backend drew `tok` (-1: q's mask allowed nothing) with
 * draw index sampler_next_draw(q->smp); advance it as sampler_sample
 * would, then seq_accept_token.  The errors read as the host path's. */
static void seq_sample_device(sched *s, struct seq *q, int32_t tok)
{
    if (q->cm && q->mask_rc) {
        sched_finish(s, q, FINISH_ERROR, s->mask_err);
        return;
    }
    if (tok < 0 || tok >= s->n_vocab) {
        char msg[96];
        if (tok == -1)
            snprintf(msg, sizeof msg, "sampler: token mask allows no token of %d", (int)s->n_vocab);
        else if (tok == BACKEND_TOKEN_NONFINITE)
            snprintf(msg, sizeof msg, "%s (NaN or inf)", SAMPLER_NONFINITE_MSG);
        else
            snprintf(msg, sizeof msg, "backend: sampled token %d outside [0, %d)", (int)tok, (int)s->n_vocab);
        sched_finish(s, q, FINISH_ERROR, msg);
        return;
    }
    sampler_skip_draw(q->smp);
    seq_accept_token(s, q, tok, 0.0f, 0); /* host_only: never a logprobs sequence */
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Token masks of the constrained sequences that sample in this step.  The
 * matcher state is final once the previous token was accepted, so this runs
 * before the backend step (an asynchronous backend overlaps it).  A failure
 * is kept in q->mask_rc and finishes the sequence at sampling time. */
static void fill_masks(sched *s, int32_t n_plan)
{
    uint64_t t0 = 0;
    int32_t n = 0;
    for (int32_t i = 0; i < n_plan; i++) {
        struct seq *q = s->plan_of[i];
        if (!q->cm || s->plan_seqs[i].logits != LOGITS_LAST)
            continue;
        if (!n++)
            t0 = now_ns();
        q->mask_rc = q->cops->fill_mask(q->cm, q->mask, s->mask_words);
        if (q->mask_rc) /* the error detail is thread-local: keep a copy */
            snprintf(s->mask_err, sizeof s->mask_err, "token mask: %s", ps_error_last());
    }
    if (n) {
        s->st.masks += (uint64_t)n;
        s->st.mask_ns += now_ns() - t0;
    }
}

static void *mask_worker_main(void *arg)
{
    sched *s = arg;
    pthread_mutex_lock(&s->mw_mu);
    for (;;) {
        while (!s->mw_stop && s->mw_finished == s->mw_posted)
            pthread_cond_wait(&s->mw_cv, &s->mw_mu);
        if (s->mw_stop)
            break;
        uint64_t job = s->mw_posted;
        int32_t n_plan = s->mw_n_plan;
        pthread_mutex_unlock(&s->mw_mu);
        fill_masks(s, n_plan);
        pthread_mutex_lock(&s->mw_mu);
        s->mw_finished = job;
        pthread_cond_broadcast(&s->mw_cv);
    }
    pthread_mutex_unlock(&s->mw_mu);
    return NULL;
}

static bool plan_has_constraint(const sched *s, int32_t n_plan)
{
    for (int32_t i = 0; i < n_plan; i++)
        if (s->plan_of[i]->cm && s->plan_seqs[i].logits == LOGITS_LAST)
            return true;
    return false;
}

/* Start filling this step's masks: on the helper thread when overlap is on
 * (started on first use; false if it cannot start: then inline), else now,
 * or, with `defer`, not at all (the device path's mask callback fills them
 * while the backend runs).  True: posted, masks_wait before reading them. */
static bool masks_begin(sched *s, int32_t n_plan, bool defer)
{
    if (!plan_has_constraint(s, n_plan))
        return false;
    if (s->mask_overlap && !s->mw_started) {
        if (pthread_create(&s->mw_thread, NULL, mask_worker_main, s))
            s->mask_overlap = false;
        else
            s->mw_started = true;
    }
    if (!s->mask_overlap) {
        if (!defer)
            fill_masks(s, n_plan);
        return false;
    }
    pthread_mutex_lock(&s->mw_mu);
    s->mw_n_plan = n_plan;
    s->mw_posted++;
    pthread_cond_broadcast(&s->mw_cv);
    pthread_mutex_unlock(&s->mw_mu);
    return true;
}

static void masks_wait(sched *s)
{
    pthread_mutex_lock(&s->mw_mu);
    while (s->mw_finished != s->mw_posted)
        pthread_cond_wait(&s->mw_cv, &s->mw_mu);
    pthread_mutex_unlock(&s->mw_mu);
}

/* The device path (backend_forward_sample) for this step: the backend
 * samples itself, the config allows it, and no sampling row needs the host
 * (q->host_only: penalties need the token history, logprobs the logits
 * row).  One such row sends the whole step to the host path: every row's
 * logits are downloaded and sampled there. */
static bool plan_device_ok(const sched *s, int32_t n_plan)
{
    if (!s->dev_sample)
        return false;
    for (int32_t i = 0; i < n_plan; i++)
        if (s->plan_seqs[i].logits == LOGITS_LAST && s->plan_of[i]->host_only)
            return false;
    return true;
}

struct mask_job {
    sched  *s;
    int32_t n_plan;
    bool    posted; /* on the helper thread, not waited for yet */
};

/* backend_mask_fn of the device path: runs while the backend computes the
 * step; the masks are ready on return (waited for, or filled now). */
static int step_masks(void *ud, const uint32_t **masks, int64_t rows)
{
    struct mask_job *j = ud;
    sched *s = j->s;
    if (j->posted) {
        masks_wait(s);
        j->posted = false;
    } else {
        fill_masks(s, j->n_plan);
    }
    int64_t row = 0;
    for (int32_t i = 0; i < j->n_plan; i++) {
        if (s->plan_seqs[i].logits != LOGITS_LAST)
            continue;
        if (row == rows)
            break;
        const struct seq *q = s->plan_of[i];
        masks[row++] = q->cm && !q->mask_rc ? q->mask : NULL; /* a failed fill finishes q afterwards */
    }
    if (row != rows)
        return ps_error_set(PS_EINTERNAL, "scheduler: the backend asked for %lld mask rows, the plan has %lld",
                            (long long)rows, (long long)row);
    return PS_OK;
}

/* Run the planned step and sample it: on the device when plan_device_ok
 * (only ids come back), else logits to the host and sampler_sample per
 * row.  A failure finishes every planned sequence with FINISH_ERROR. */
static int step_run(sched *s, int32_t n_plan)
{
    struct batch_plan plan = { .seqs = s->plan_seqs, .n_seqs = n_plan };
    const bool dev = plan_device_ok(s, n_plan);
    int64_t rows = 0;
    if (dev)
        for (int32_t i = 0; i < n_plan; i++) {
            if (s->plan_seqs[i].logits != LOGITS_LAST)
                continue;
            struct seq *q = s->plan_of[i];
            s->dev_params[rows] = q->bsp;
            s->dev_params[rows].step = sampler_next_draw(q->smp);
            rows++;
        }
    struct mask_job job = { .s = s, .n_plan = n_plan, .posted = masks_begin(s, n_plan, dev) };
    int rc = dev ? backend_forward_sample(s->be, &plan, s->dev_params, step_masks, &job, s->dev_tokens)
                 : backend_forward(s->be, &plan, s->logits);
    if (job.posted) /* the host path, or a backend that failed before asking */
        masks_wait(s);
    if (rc) {
        char msg[256];
        snprintf(msg, sizeof msg, "backend: %s", ps_error_last());
        for (int32_t i = 0; i < n_plan; i++)
            sched_finish(s, s->plan_of[i], FINISH_ERROR, msg);
        return rc;
    }
    if (dev)
        s->st.device_sampled_steps++;
    /* plan_of[] entries may be freed during sampling: read rows first. */
    int32_t row = 0;
    for (int32_t i = 0; i < n_plan; i++) {
        struct seq *q = s->plan_of[i];
        bool last = s->plan_seqs[i].logits == LOGITS_LAST;
        q->n_computed += q->take;
        q->in_plan = false;
        seq_publish_blocks(s, q);
        if (!last)
            continue;
        if (dev)
            seq_sample_device(s, q, s->dev_tokens[row++]);
        else
            seq_sample_host(s, q, s->logits + (size_t)row++ * s->n_vocab);
    }
    return PS_OK;
}

int sched_step(sched *s, int32_t *n_scheduled)
{
    int32_t n_plan = 0;
    s->budget = s->cfg.max_batch_tokens;
    s->admit_floor = INT32_MIN;
    *n_scheduled = 0;
    for (int32_t i = 0; i < s->n_running; i++)
        s->running[i]->in_plan = false;

    /* Pass 1: decodes; pass 2: prefill chunks of running sequences.  Walk a
     * snapshot: preemption reorders the running array. */
    struct seq **snap = s->plan_of + s->cfg.max_seqs; /* second half of the scratch */
    int32_t n_snap = s->n_running;
    memcpy(snap, s->running, (size_t)n_snap * sizeof *snap);
    for (int pass = 0; pass < 2; pass++)
        for (int32_t i = 0; i < n_snap && s->budget > 0; i++) {
            struct seq *q = snap[i];
            if (q->state != SEQ_RUNNING || q->in_plan)
                continue;
            bool decode = q->n_tokens - q->n_computed == 1;
            if (decode != (pass == 0))
                continue;
            int32_t took = schedule_running(s, q, s->budget, &n_plan); /* may refund */
            s->budget -= took;
        }
    /* Pass 3: admissions in priority order.  A waiting sequence that does
     * not fit (no batch slot, no blocks, no budget left) preempts the
     * lowest-priority, latest-arrived running sequence when that one's
     * priority is strictly lower (it is taken out of this step's batch when
     * it was in it); an equal priority never preempts.  While it outranks a
     * running sequence it is admitted with its whole first chunk or not at
     * all (no piecemeal prefill beside lower priorities); parked group
     * members give their blocks back before anyone is preempted.  Each round
     * admits, releases the parked or preempts one running sequence, so the
     * loop ends. */
    while (s->n_waiting > 0) {
        struct seq *w = s->waiting[0];
        if (w->priority <= s->admit_floor || group_waits(s, w))
            break;
        struct seq *v = s->n_running > 0 ? s->running[s->n_running - 1] : NULL;
        bool outranks = v && v->priority < w->priority;
        if (s->budget > 0 && s->n_running < s->cfg.max_seqs) {
            int32_t took = sched_admit(s, w, s->budget, outranks, &n_plan);
            if (took) {
                s->budget -= took;
                continue;
            }
        }
        if (!outranks)
            break;
        if (s->n_parked > 0 && s->budget > 0 && s->n_running < s->cfg.max_seqs) {
            /* w lacks blocks: finished members' blocks go before a live
             * request's progress (then w is tried again) */
            parked_release(s);
            continue;
        }
        preempt_victim(s, v, &n_plan);
        s->st.priority_preemptions++;
    }
    parked_release(s); /* the members that could share their blocks have */
    if (!n_plan)
        return PS_OK;

    for (int32_t i = 0; i < n_plan; i++) {
        struct seq *q = s->plan_of[i];
        bool last = q->n_computed + q->take == q->n_tokens;
        s->plan_seqs[i] = (struct batch_seq){
            .tokens = q->tokens + q->n_computed, .n_tokens = q->take, .pos0 = q->n_computed,
            .block_table = q->blocks, .n_blocks = q->n_blocks,
            .logits = last ? LOGITS_LAST : LOGITS_NONE,
        };
        /* everything but the forward of a just-sampled token is prefill */
        s->st.prefill_tokens += (uint64_t)(q->take - (last && q->n_generated > 0 ? 1 : 0));
    }
    s->st.steps++;
    *n_scheduled = n_plan;
    return step_run(s, n_plan);
}

/* ---- public API -------------------------------------------------------------- */

int sched_create(const struct sched_config *cfg, backend *be, const struct sched_vocab *vocab,
                 sched_event_fn on_event, void *ud, sched **out)
{
    *out = NULL;
    if (!cfg || !be || cfg->max_seqs < 1 || cfg->max_batch_tokens < 1 || cfg->n_ctx < 2)
        return ps_error_set(PS_EINVAL, "scheduler: bad config (max_seqs %d, max_batch_tokens %d, n_ctx %d)",
                            cfg ? (int)cfg->max_seqs : 0, cfg ? (int)cfg->max_batch_tokens : 0,
                            cfg ? (int)cfg->n_ctx : 0);
    if (cfg->max_batch_tokens > be->cfg.max_batch_tokens)
        return ps_error_set(PS_EINVAL, "scheduler: max_batch_tokens %d exceeds the backend's %d",
                            (int)cfg->max_batch_tokens, (int)be->cfg.max_batch_tokens);
    int rc;
    struct sched *s = calloc(1, sizeof *s);
    if (!s)
        return ps_error_set(PS_ENOMEM, "scheduler: out of memory");
    s->cfg = *cfg;
    s->be = be;
    if (vocab)
        s->vocab = *vocab;
    s->on_event = on_event;
    s->ud = ud;
    s->bs = be->cfg.block_size;
    s->n_vocab = be->model->hp.n_vocab;
    s->mask_words = ((size_t)s->n_vocab + 31) / 32;
    s->mask_overlap = cfg->mask_thread > 0 || (cfg->mask_thread == 0 && strcmp(backend_name(be), "cpu"));
    s->dev_sample = cfg->device_sample >= 0 && backend_can_sample(be);
    pthread_mutex_init(&s->mw_mu, NULL);
    pthread_cond_init(&s->mw_cv, NULL);
    int64_t cache_tokens = (int64_t)be->cfg.n_kv_blocks * s->bs;
    if (s->cfg.n_ctx > cache_tokens)
        s->cfg.n_ctx = (int32_t)cache_tokens;
    rc = kv_blocks_create(be->cfg.n_kv_blocks, &s->kv);
    if (rc)
        goto fail;
    rc = prefix_cache_create(s->kv, s->bs, &s->pc);
    if (rc)
        goto fail;
    size_t ms = (size_t)cfg->max_seqs;
    size_t max_blocks = (size_t)(s->cfg.n_ctx + s->bs - 1) / (size_t)s->bs + 1;
    s->running = calloc(ms, sizeof *s->running);
    s->parked = calloc(ms, sizeof *s->parked);
    s->plan_seqs = calloc(ms, sizeof *s->plan_seqs);
    s->plan_of = calloc(2 * ms, sizeof *s->plan_of);
    s->logits = malloc(ms * (size_t)s->n_vocab * sizeof *s->logits);
    s->lp_row = malloc((size_t)s->n_vocab * sizeof *s->lp_row);
    s->dev_params = calloc(ms, sizeof *s->dev_params);
    s->dev_tokens = calloc(ms, sizeof *s->dev_tokens);
    s->match_buf = malloc(max_blocks * sizeof *s->match_buf);
    s->hash_buf = malloc(max_blocks * sizeof *s->hash_buf);
    if (!s->running || !s->parked || !s->plan_seqs || !s->plan_of || !s->logits || !s->lp_row || !s->dev_params ||
        !s->dev_tokens || !s->match_buf || !s->hash_buf) {
        rc = ps_error_set(PS_ENOMEM, "scheduler: out of memory for %d sequences", (int)cfg->max_seqs);
        goto fail;
    }
    *out = s;
    return PS_OK;
fail:
    sched_free(s);
    return rc;
}

void sched_cancel_all(sched *s)
{
    while (s->n_running > 0)
        sched_finish(s, s->running[s->n_running - 1], FINISH_CANCELLED, NULL);
    while (s->n_waiting > 0)
        sched_finish(s, s->waiting[s->n_waiting - 1], FINISH_CANCELLED, NULL);
    parked_release(s);
}

void sched_free(sched *s)
{
    if (!s)
        return;
    sched_cancel_all(s);
    if (s->mw_started) {
        pthread_mutex_lock(&s->mw_mu);
        s->mw_stop = true;
        pthread_cond_broadcast(&s->mw_cv);
        pthread_mutex_unlock(&s->mw_mu);
        pthread_join(s->mw_thread, NULL);
    }
    pthread_mutex_destroy(&s->mw_mu);
    pthread_cond_destroy(&s->mw_cv);
    free(s->hash_buf);
    free(s->match_buf);
    free(s->dev_tokens);
    free(s->dev_params);
    free(s->lp_row);
    free(s->logits);
    free(s->plan_of);
    free(s->plan_seqs);
    free(s->parked);
    free(s->waiting);
    free(s->running);
    prefix_cache_free(s->pc);
    kv_blocks_free(s->kv);
    free(s);
}

int sched_submit(sched *s, const struct sched_request *req)
{
    if (req->n_prompt < 1 || !req->prompt)
        return ps_error_set(PS_EINVAL, "the prompt is empty");
    if (req->n_prompt >= s->cfg.n_ctx)
        return ps_error_set(PS_EINVAL,
                            "the prompt has %d tokens; the context holds %d, so at most %d prompt tokens fit",
                            (int)req->n_prompt, (int)s->cfg.n_ctx, (int)s->cfg.n_ctx - 1);
    if (req->max_tokens < 1)
        return ps_error_set(PS_EINVAL, "max_tokens must be >= 1, got %d", (int)req->max_tokens);
    for (int32_t i = 0; i < req->n_prompt; i++)
        if (req->prompt[i] < 0 || req->prompt[i] >= s->n_vocab)
            return ps_error_set(PS_EINVAL, "prompt token %d is outside the vocabulary [0, %d)",
                                (int)req->prompt[i], (int)s->n_vocab);
    if (req->top_logprobs < 0 || req->top_logprobs > SCHED_MAX_TOP_LOGPROBS ||
        (req->top_logprobs && !req->logprobs))
        return ps_error_set(PS_EINVAL, "top_logprobs %d: must be in [0, %d], and 0 without logprobs",
                            (int)req->top_logprobs, SCHED_MAX_TOP_LOGPROBS);
    int rc = sampler_params_validate(&req->sampling);
    if (rc)
        return rc;
    if (s->n_waiting == s->cap_waiting) {
        int32_t cap = s->cap_waiting ? 2 * s->cap_waiting : 64;
        struct seq **w = realloc(s->waiting, (size_t)cap * sizeof *w);
        if (!w)
            return ps_error_set(PS_ENOMEM, "scheduler: out of memory");
        s->waiting = w;
        s->cap_waiting = cap;
    }
    struct seq *q = calloc(1, sizeof *q);
    if (!q)
        return ps_error_set(PS_ENOMEM, "scheduler: out of memory");
    q->id = req->id;
    q->tenant = req->tenant;
    q->priority = req->priority > INT32_MIN ? req->priority : INT32_MIN + 1; /* above any admit floor */
    q->arrival = s->next_arrival++;
    q->since = req->queued_since > 0 ? req->queued_since : (int64_t)now_ns();
    q->group = req->prompt_group;
    q->user = req->user;
    q->n_prompt = req->n_prompt;
    q->max_tokens = req->max_tokens;
    q->ignore_eos = req->ignore_eos;
    int64_t cap_tokens = (int64_t)req->n_prompt + req->max_tokens;
    if (cap_tokens > s->cfg.n_ctx)
        cap_tokens = s->cfg.n_ctx;
    q->cap_tokens = (int32_t)cap_tokens;
    q->cap_blocks = (q->cap_tokens + s->bs - 1) / s->bs;
    q->tokens = malloc((size_t)q->cap_tokens * sizeof *q->tokens);
    q->blocks = malloc((size_t)q->cap_blocks * sizeof *q->blocks);
    if (!q->tokens || !q->blocks)
        goto oom;
    memcpy(q->tokens, req->prompt, (size_t)req->n_prompt * sizeof *q->tokens);
    q->n_tokens = req->n_prompt;
    q->last_hash = prefix_cache_seed(q->tenant);
    if (req->n_stop > 0) {
        q->stop = calloc((size_t)req->n_stop, sizeof *q->stop);
        if (!q->stop)
            goto oom;
        for (int32_t i = 0; i < req->n_stop; i++) {
            if (!req->stop[i] || !req->stop[i][0])
                continue;
            q->stop[q->n_stop] = strdup(req->stop[i]);
            if (!q->stop[q->n_stop])
                goto oom;
            q->n_stop++;
        }
    }
    rc = sampler_create(&req->sampling, s->n_vocab, &q->smp);
    if (!rc && req->n_logit_bias > 0)
        rc = sampler_set_bias(q->smp, req->logit_bias, req->n_logit_bias);
    if (rc) {
        seq_destroy(q);
        return rc;
    }
    /* "penalized": sampler_sample rewrites the row (penalties, biases) */
    q->penalized = sampler_params_need_history(&req->sampling) || req->n_logit_bias > 0;
    q->logprobs = req->logprobs;
    q->n_top = req->top_logprobs;
    q->host_only = q->penalized || q->logprobs;
    q->bsp = (struct backend_sample_params){
        .temperature = req->sampling.temperature, .top_k = req->sampling.top_k,
        .top_p = req->sampling.top_p, .min_p = req->sampling.min_p, .seed = req->sampling.seed,
    };
    if (req->constraint.ops) {
        const struct token_constraint_ops *ops = req->constraint.ops;
        if (!ops->matcher_new || !ops->matcher_free || !ops->fill_mask || !ops->accept || !ops->is_done) {
            seq_destroy(q);
            return ps_error_set(PS_EINVAL, "scheduler: incomplete token constraint");
        }
        q->mask = malloc(s->mask_words * sizeof *q->mask);
        if (!q->mask)
            goto oom;
        rc = ops->matcher_new(req->constraint.ctx, &q->cm);
        if (rc) {
            seq_destroy(q);
            return rc;
        }
        q->cops = ops;
    }
    for (int32_t i = 0; i < req->n_prompt; i++)
        sampler_accept(q->smp, req->prompt[i]);
    q->state = SEQ_WAITING;
    list_insert(s->waiting, &s->n_waiting, q);
    s->st.prompt_tokens += (uint64_t)req->n_prompt;
    return PS_OK;
oom:
    seq_destroy(q);
    return ps_error_set(PS_ENOMEM, "scheduler: out of memory");
}

int sched_cancel(sched *s, uint64_t id)
{
    for (int32_t i = 0; i < s->n_running; i++)
        if (s->running[i]->id == id) {
            sched_finish(s, s->running[i], FINISH_CANCELLED, NULL);
            return PS_OK;
        }
    for (int32_t i = 0; i < s->n_waiting; i++)
        if (s->waiting[i]->id == id) {
            sched_finish(s, s->waiting[i], FINISH_CANCELLED, NULL);
            return PS_OK;
        }
    return ps_error_set(PS_ENOTFOUND, "scheduler: request %llu is not live", (unsigned long long)id);
}

bool sched_has_work(const sched *s)
{
    return s->n_running > 0 || s->n_waiting > 0 || s->n_parked > 0; /* a step releases parked blocks */
}

int32_t sched_n_ctx(const sched *s)
{
    return s->cfg.n_ctx;
}

void sched_get_stats(const sched *s, struct sched_stats *st)
{
    *st = s->st;
    st->n_running = s->n_running;
    st->n_waiting = s->n_waiting;
    st->kv_total = kv_blocks_n_total(s->kv);
    st->kv_free = kv_blocks_n_free(s->kv);
    st->kv_cached = prefix_cache_n_cached(s->pc);
    st->kv_idle = prefix_cache_n_idle(s->pc);
}
