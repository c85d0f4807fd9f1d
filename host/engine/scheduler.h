/* scheduler.h - continuous batching of sequences over one backend.
 *
 * The scheduler lives on the engine thread.  Each sched_step builds one
 * ragged batch under a token budget (max_batch_tokens): first one decode
 * token for every running sequence that has finished its prompt, then
 * prefill chunks of running sequences, then new admissions from the waiting
 * queue (chunked prefill: a long prompt spreads over several steps, mixed
 * with other sequences' decodes).  Sequences join and leave at every step.
 *
 * Sequence state machine (one struct seq per request):
 *
 *     sched_submit          sched_admit                 sched_finish
 *   ───────────────► WAITING ─────────► RUNNING ─────────────────────► FINISHED
 *                       ▲                 │  ▲                           ▲
 *                       │  sched_preempt  │  │ sched_admit               │
 *                       │  (KV blocks     ▼  │ (re-prefill; prefix       │
 *                       └──────────── PREEMPTED  cache usually hits)     │
 *                                         │                              │
 *                                         └──── sched_cancel ────────────┘
 *   sched_cancel also finishes WAITING and RUNNING sequences.
 *
 *   sched_submit   validates the request, creates its sampler (prompt tokens
 *                  enter the penalty history), queues it WAITING.
 *   sched_admit    (inside sched_step) matches the longest cached prefix
 *                  (prefix_cache_match: those blocks are shared, not
 *                  recomputed), or the longer prefix a running sequence of
 *                  its prompt group has computed (below), allocates blocks
 *                  for the first chunk, moves the sequence to the running
 *                  set.
 *   sched_preempt  (inside sched_step) releases every block of a running
 *                  sequence, taking it out of this step's batch if it was in:
 *                  (a) KV pressure: a running sequence needs a block and none
 *                  is free or evictable: the victim is the lowest-priority,
 *                  latest-arrived running sequence ordered after it (else
 *                  it preempts itself while sequences ahead hold blocks);
 *                  (b) priority: the first waiting request cannot be admitted
 *                  (no batch slot, blocks or budget) and the lowest-priority,
 *                  latest-arrived running sequence has a strictly lower
 *                  priority.  Its prompt and generated tokens and its
 *                  sampler are kept; it waits (ahead of later arrivals of its
 *                  priority) and is re-prefilled (recompute) when admitted,
 *                  never in the step that preempted it.  Equal priorities
 *                  never preempt each other out of arrival order, so a
 *                  preempted sequence is displaced only by sequences ahead
 *                  of it, which finish: no preemption loops.  Strict
 *                  priorities can starve lower ones under sustained load.
 *   sched_finish   EOG token, stop string, max_tokens, context full, cancel,
 *                  or backend error: releases blocks, emits SCHED_EV_DONE.
 *                  A constrained sequence (sched_request.constraint) also
 *                  finishes "stop" when its matcher is done, and "length"
 *                  when max_tokens cuts it (the text is not repaired).
 *
 * Constrained decoding: each step fills the token mask of every constrained
 * sequence that samples in it (the matcher state is known before the
 * backend step: it only changes when a token is sampled).  With mask_thread
 * on, a helper thread fills them while backend_forward runs (the GPU case:
 * the engine thread only waits there), so the masks cost nothing on the
 * step's critical path; otherwise the engine thread fills them just before
 * the step.  The sampler applies the mask and the matcher accepts the
 * sampled token.  Unconstrained sequences never touch a mask.
 *
 * Where a step is sampled (sched_step):
 *   device path  the backend samples itself (backend_can_sample: the CUDA
 *                backend), sched_config.device_sample is not -1, and no
 *                sampling row of the step has a penalty (penalties need the
 *                token history, kept on the host) or wants logprobs (they
 *                need the logits row).  backend_forward_sample
 *                starts the forward, asks for the masks through its mask
 *                callback (they are filled then, or waited for from the
 *                helper thread, while the device computes), uploads them and
 *                samples on the device; only ids come back.
 *   host path    otherwise: backend_forward copies every logits row back and
 *                sampler_sample picks each token.
 * Both paths draw U(seed, k) for a sequence's k-th token (sampler.h), so a
 * seeded sequence does not depend on which path each of its steps took
 * (up to float summation order in top-p/top-k/min-p on the GPU; greedy is
 * exact).  Both end in the same accept step: matcher accept, penalty
 * history, EOG / stop strings / matcher done / max_tokens / context.  A row
 * whose mask allows no token finishes that sequence alone (FINISH_ERROR,
 * "token mask allows no token"), on either path.
 *
 * Prompt groups (sched_request.prompt_group: the n choices of one API
 * request, same tenant, same prompt): the prompt is computed once.  A
 * waiting member is not admitted while another member is RUNNING with its
 * prompt not yet computed (it holds the queue, as any first-in-line
 * request that cannot start: arrival order is kept); once one is, the
 * member takes references on that donor's blocks covering their common
 * token prefix (at most its own tokens less the last, which must run for
 * logits; at most what the donor has computed) and copies the partial last
 * block before writing into it (seq_make_writable), so it recomputes one
 * token instead of the prompt.  With no running member (the first one, or
 * all others finished or preempted) a member is admitted as any request.
 * A member that finishes normally (stop, length) while others of its group
 * wait is parked: its DONE goes out, but it keeps its blocks as a donor
 * until the end of the next step's admissions (or until a block
 * allocation would fail, or a higher priority would preempt a running
 * sequence for lack of blocks), so a prompt computed in the step that also
 * ended the member (max_tokens 1) is still shared.
 * Shared tokens are counted in sched_stats.group_shared_tokens, not as
 * prefix-cache hits nor as n_cached.
 *
 * Invariants
 *   1. Every request gets exactly one SCHED_EV_DONE (after zero or more
 *      SCHED_EV_TOKEN), then the scheduler forgets it.
 *   2. A RUNNING sequence has n_computed < n_tokens: its last token (the
 *      last sampled one, or the rest of the prompt) still has to go through
 *      the backend.  WAITING and PREEMPTED sequences hold no blocks.
 *   3. Priority: larger first; FCFS (arrival order: queued_since, then
 *      submit order) within a priority, for admission and (reversed) for
 *      the choice of preemption victim.
 *   4. Full blocks of computed tokens are offered to the prefix cache; a
 *      sequence only writes past its shared prefix (copy-on-write through
 *      backend_copy_block guards the block it writes if it were shared).
 *   5. Text in SCHED_EV_TOKEN events never ends inside a UTF-8 character
 *      nor inside a possible prefix of a stop string; a matched stop string
 *      and what follows are never emitted.
 *
 * Not thread-safe: one thread calls everything (engine.h owns the thread).
 */
#ifndef PS_SCHEDULER_H
#define PS_SCHEDULER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "sampler.h"

enum seq_state { SEQ_WAITING, SEQ_RUNNING, SEQ_PREEMPTED, SEQ_FINISHED };

/* Most alternatives a TOKEN event carries (sched_request.top_logprobs):
 * OpenAI chat's top_logprobs maximum. */
#define SCHED_MAX_TOP_LOGPROBS 20

enum finish_reason {
    FINISH_NONE = 0,
    FINISH_STOP,      /* EOG token or stop string                    */
    FINISH_LENGTH,    /* max_tokens or the context is full           */
    FINISH_CANCELLED, /* sched_cancel (client left, shutdown)        */
    FINISH_ERROR,     /* backend failure; event carries the message  */
};
const char *finish_reason_str(enum finish_reason r); /* "stop", "length", ... */

struct sched_config {
    int32_t max_seqs;         /* running sequences at once, >= 1              */
    int32_t max_batch_tokens; /* token budget per step, <= backend's          */
    int32_t n_ctx;            /* max prompt + generated tokens per sequence   */
    bool    prefix_cache;     /* share full prompt blocks across requests     */
    int32_t mask_thread;      /* fill token masks on a helper thread while
                                 backend_forward runs: 0 auto (on unless the
                                 backend is "cpu", whose forward already
                                 uses every core), 1 on, -1 off             */
    int32_t device_sample;    /* 0 auto: sample in the backend when it can
                                 (backend_can_sample) and the step has no
                                 penalized row; -1 never (logits to the host) */
};

/* Text side, all optional (NULL piece: events carry no text and stop strings
 * never match; NULL is_eog: no token ends generation). */
struct sched_vocab {
    void        *ud;
    const char *(*piece)(void *ud, int32_t id, size_t *len); /* bytes of a token */
    bool        (*is_eog)(void *ud, int32_t id);
};

/* A token constraint (constrained decoding, e.g. a compiled JSON Schema
 * grammar: grammar.h's grammar_constraint()).  `ctx` is a shared, immutable,
 * reference-counted factory; each sequence gets its own matcher from it.
 * The engine layer knows only this table, so it does not link the grammar
 * module.  ops == NULL: unconstrained.
 *
 *   retain/release   take / drop a reference to ctx (any thread)
 *   matcher_new      a matcher at the start of the output (it keeps what it
 *                    needs of ctx alive by itself)
 *   fill_mask        write the allowed-token bitset into mask[n_words]
 *                    (bit id % 32 of word id / 32; words past the
 *                    constraint's vocabulary are zeroed); never all zero
 *                    while !is_done
 *   accept           advance by a sampled token; an error when not allowed
 *   is_done          nothing may follow: the sequence finishes ("stop")
 * Matchers are used by the engine thread only. */
struct token_constraint_ops {
    void (*retain)(void *ctx);
    void (*release)(void *ctx);
    int  (*matcher_new)(void *ctx, void **matcher);
    void (*matcher_free)(void *matcher);
    int  (*fill_mask)(void *matcher, uint32_t *mask, size_t n_words);
    int  (*accept)(void *matcher, int32_t token);
    bool (*is_done)(const void *matcher);
};

struct token_constraint {
    const struct token_constraint_ops *ops; /* NULL: none */
    void *ctx;
};

struct sched_request {
    uint64_t       id;        /* caller's, unique among live requests     */
    uint32_t       tenant;    /* seeds the prefix-cache chain (isolation) */
    int32_t        priority;  /* larger runs first                        */
    int64_t        queued_since; /* CLOCK_MONOTONIC ns; > 0: within its
                                 priority the request queues (and is
                                 preempted) as if it had arrived then, so
                                 a task's later decisions keep the place
                                 of its first; 0: when submitted          */
    const int32_t *prompt;    /* [n_prompt], copied                       */
    int32_t        n_prompt;  /* >= 1                                     */
    int32_t        max_tokens;/* >= 1                                     */
    struct sampler_params sampling;
    const char *const *stop;  /* [n_stop] NUL-terminated, copied          */
    int32_t        n_stop;
    bool           ignore_eos;
    bool           logprobs;  /* TOKEN events carry the sampled token's
                                 log-probability (the logits row is read
                                 on the host: always the host path)      */
    const struct sampler_bias *logit_bias; /* [n_logit_bias], copied: added
                                 to the logits before sampling (forces
                                 the host path)                          */
    int32_t        n_logit_bias;
    int32_t        top_logprobs; /* with logprobs: TOKEN events also carry
                                 the this-many most likely ids of the
                                 step (sampler_top_logprobs), 0 to
                                 SCHED_MAX_TOP_LOGPROBS; else 0          */
    struct token_constraint constraint; /* borrowed: sched_submit creates
                                  the sequence's matcher from it          */
    uint64_t       prompt_group; /* 0: none; else requests of this tenant
                                 with the same value share the prompt's
                                 KV blocks (prompt groups, above); only
                                 their common token prefix is shared, so
                                 a member whose prompt differs is merely
                                 admitted later                          */
    void          *user;      /* handed back in every event               */
};

enum sched_event_kind { SCHED_EV_TOKEN, SCHED_EV_DONE };

/* Pointers inside are valid only during the callback. */
struct sched_event {
    enum sched_event_kind kind;
    uint64_t    id;
    void       *user;
    int32_t     token;       /* TOKEN: the sampled id                        */
    const char *text;        /* bytes now safe to show (TOKEN: may be empty;
                                DONE: the held-back rest)                    */
    size_t      text_len;
    /* TOKEN only: */
    const char *piece;       /* the bytes this token added to the output
                                text (before hold-back and stop strings cut
                                it; empty for EOG): the output so far is a
                                prefix of all tokens' pieces, in order       */
    size_t      piece_len;
    bool        has_logprob; /* the request asked for logprobs               */
    float       logprob;     /* then: the token's log-probability under the
                                raw logits (sampler_logprob: before
                                penalties, temperature, truncation, mask)    */
    const int32_t *top_ids;  /* [n_top] with has_logprob: the step's most  */
    const float   *top_lps;  /* likely ids and their logprobs under the same
                                raw logits (sampler_top_logprobs: logprob
                                descending, ties by lower id, no -inf
                                entry), n_top <= the request's top_logprobs;
                                the sampled token may or may not be among
                                them                                        */
    int32_t     n_top;
    /* TOKEN and DONE (TOKEN: so far, this token included): */
    int32_t     n_prompt;    /* prompt tokens                                */
    int32_t     n_cached;    /* prompt tokens served by the prefix cache at
                                first admission                              */
    int32_t     n_generated; /* completion tokens                            */
    /* DONE only: */
    enum finish_reason finish;
    int32_t     n_preempted; /* times this sequence was preempted            */
    const char *error;       /* FINISH_ERROR: message                        */
};
/* Event sink.  Returns 0 when it took the event; non-zero when it could not
 * (out of memory) - for a TOKEN event only, a DONE event must be taken:
 * the scheduler then keeps the event's text held back, so that the next
 * event (at the latest DONE) carries it and no text is lost; a request
 * with logprobs, whose per-token record is lost, ends FINISH_ERROR. */
typedef int (*sched_event_fn)(void *ud, const struct sched_event *ev);

struct sched_stats {
    int32_t  n_running, n_waiting;
    int32_t  kv_total, kv_free;     /* blocks                               */
    int32_t  kv_cached, kv_idle;    /* listed in the prefix cache / of those
                                       held by no sequence                  */
    uint64_t steps;
    uint64_t prompt_tokens;         /* submitted prompt tokens              */
    uint64_t prefill_tokens;        /* tokens run through the backend as
                                       prompt (recompute included)          */
    uint64_t prefix_hit_tokens;     /* tokens served by the prefix cache    */
    uint64_t group_shared_tokens;   /* tokens whose KV blocks a sequence took
                                       from a running member of its prompt
                                       group instead of computing them     */
    uint64_t generated_tokens;
    uint64_t preemptions;           /* all, priority_preemptions included */
    uint64_t priority_preemptions;  /* for a waiting higher-priority request */
    uint64_t cow_copies;
    uint64_t masks;                 /* token masks filled (constrained steps) */
    uint64_t mask_ns;               /* time spent filling them              */
    uint64_t device_sampled_steps;  /* steps sampled by the backend (device
                                       path); the rest of `steps` copied
                                       logits to the host                   */
};

typedef struct sched sched;

/* be is borrowed (outlives the scheduler); the scheduler owns a kv_blocks
 * allocator of be->cfg.n_kv_blocks blocks and the prefix cache over it.
 * n_ctx is capped at what the cache can hold. */
int  sched_create(const struct sched_config *cfg, backend *be, const struct sched_vocab *vocab,
                  sched_event_fn on_event, void *ud, sched **out);
/* Finishes (FINISH_CANCELLED, events emitted) whatever is left. NULL-safe. */
void sched_free(sched *s);

/* WAITING.  PS_EINVAL naming the problem (empty prompt, prompt not shorter
 * than the context, max_tokens < 1, bad sampling parameter, top_logprobs
 * outside [0, SCHED_MAX_TOP_LOGPROBS] or non-zero without logprobs); no
 * event then. */
int  sched_submit(sched *s, const struct sched_request *req);

/* Finish request `id` with FINISH_CANCELLED (releasing its blocks) and emit
 * its DONE event now.  PS_ENOTFOUND when it is not live. */
int  sched_cancel(sched *s, uint64_t id);

/* One batch: schedule, run the backend and sample (device or host path,
 * see above), emit events.  Sets
 * *n_scheduled to the sequences in the batch (0: nothing to do).  A backend
 * failure finishes the batch's sequences with FINISH_ERROR and is returned. */
int  sched_step(sched *s, int32_t *n_scheduled);

/* Cancel every live request (shutdown). */
void sched_cancel_all(sched *s);

bool sched_has_work(const sched *s);
int32_t sched_n_ctx(const sched *s);
void sched_get_stats(const sched *s, struct sched_stats *st);

/* Stop-string scan of pending text t[0..len): when a stop occurs, *stop_at =
 * its earliest start and true is returned; else *safe = how many leading
 * bytes can be emitted (the rest might begin a stop string or is an
 * incomplete UTF-8 character). */
bool sched_text_scan(const char *t, size_t len, const char *const *stop, int32_t n_stop,
                     size_t *stop_at, size_t *safe);

#endif /* PS_SCHEDULER_H */
