/* engine.h - the engine thread: a scheduler over a backend, fed by a locked
 * request queue and answering through a locked event queue.
 *
 *   event-loop thread                         engine thread
 *   engine_submit / engine_cancel ──queue──►  tokenize, sched_submit / sched_cancel
 *          (eventfd in_fd wakes it)           sched_step ... (never touches sockets)
 *   engine_events_fd readable  ◄──queue──     struct engine_event per token / end
 *   engine_take_events                        (eventfd out_fd, one write per step)
 *
 * Neither side waits for the other's kind of work: the caller's thread only
 * takes a mutex for a list splice; the engine thread blocks in poll() only
 * when it has nothing to compute.
 *
 * Request lifetime: every engine_submit is answered by zero or more
 * ENGINE_EV_TOKEN events and exactly one ENGINE_EV_DONE event carrying the
 * submit's `user` pointer, also when the request is rejected (prompt too
 * long: status 400), cancelled, or the engine stops.  The caller may free
 * its per-request state when DONE arrives, not before.
 */
#ifndef PS_ENGINE_H
#define PS_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../model/tokenizer.h"
#include "backend.h"
#include "scheduler.h"

struct engine_config {
    int32_t max_seqs;         /* running sequences at once                */
    int32_t max_batch_tokens; /* token budget per step                    */
    int32_t n_ctx;            /* per-sequence context (prompt + output)   */
    bool    prefix_cache;
    int32_t mask_thread;      /* token masks beside the backend step:
                                 0 auto (on unless the backend is "cpu"),
                                 1 on, -1 off (scheduler.h)              */
    int32_t device_sample;    /* 0 auto: the backend samples when it can
                                 (CUDA, masks uploaded); -1 never: logits
                                 to the host sampler (scheduler.h)        */
};

/* What the event-loop side hands over.  Strings and arrays are copied by
 * engine_submit (the caller keeps ownership of its own). */
struct engine_request {
    uint32_t       tenant;
    int32_t        priority;
    int64_t        queued_since;  /* CLOCK_MONOTONIC ns to queue as of (a
                                     task's first decision), 0: now
                                     (sched_request.queued_since)         */
    const char    *prompt;        /* text to tokenize (NUL-terminated), or NULL */
    bool           parse_special; /* recognise special-token text anywhere in
                                     prompt (a raw completion prompt)         */
    const struct text_span *special_spans; /* non-NULL: recognise it only
                                     inside these [n_special_spans] byte
                                     ranges of prompt - a rendered chat's
                                     markup (chat.h), so message text stays
                                     text.  Copied; with parse_special:
                                     PS_EINVAL                             */
    int32_t        n_special_spans;
    bool           add_bos;       /* prepend BOS when the model wants one      */
    const int32_t *prompt_ids;    /* [n_prompt_ids] when prompt is NULL        */
    int32_t        n_prompt_ids;
    int32_t        max_tokens;    /* <= 0: up to the context                   */
    struct sampler_params sampling;
    const char *const *stop;      /* [n_stop]; NULL entries are ignored        */
    int32_t        n_stop;
    bool           ignore_eos;
    const struct sampler_bias *logit_bias; /* [n_logit_bias], copied (sampler.h;
                                     sampled on the host)                  */
    int32_t        n_logit_bias;
    bool           logprobs;      /* TOKEN events carry the sampled token's
                                     log-probability and text (sampled on
                                     the host: scheduler.h)               */
    int32_t        top_logprobs;  /* with logprobs: and the step's this-many
                                     most likely ids with their logprobs,
                                     0..SCHED_MAX_TOP_LOGPROBS (outside, or
                                     non-zero without logprobs: a DONE with
                                     status 400)                          */
    /* Constrained decoding (optional; ops == NULL: none).  engine_submit
     * takes its own reference (constraint.ops->retain), so the caller may
     * drop its reference right after submitting.  From a compiled JSON
     * Schema (host/grammar/grammar.h):
     *
     *   grammar *g;                      // grammar_compile(vocab, schema, len, NULL, &g)
     *   req.constraint = grammar_constraint(g);
     *   engine_submit(e, &req, &id);
     *   grammar_free(g);                 // the engine holds its own reference
     *
     * Every sampled token is masked to what the grammar allows; the request
     * finishes FINISH_STOP when the document is complete (nothing may
     * follow, or EOG once it may end) and FINISH_LENGTH when max_tokens cuts
     * it (the partial text is delivered as is).  Stop strings still apply.
     * For orchestrator actions: grammar_action_schema() -> grammar_compile.
     * grammar_constraint_lazy(g) instead lets the first token choose
     * between a document of g and unconstrained text. */
    struct token_constraint constraint;
    uint64_t       prompt_group;  /* 0: none; else the requests of one tenant
                                     with this value (the caller picks it,
                                     unique among its live groups) have the
                                     same prompt, which the scheduler
                                     computes once and shares (scheduler.h,
                                     prompt groups): the n choices of one
                                     API request                          */
    void          *user;
};

enum engine_event_kind { ENGINE_EV_TOKEN, ENGINE_EV_DONE };

struct engine_event {
    struct engine_event *next;
    enum engine_event_kind kind;
    uint64_t id;
    void    *user;
    int32_t  token;
    char    *text;        /* owned by the event; NUL-terminated, text_len bytes */
    size_t   text_len;
    /* TOKEN of a logprobs request only (has_logprob; else piece is NULL): */
    bool     has_logprob;
    float    logprob;     /* log-probability under the raw logits, <= 0 */
    char    *piece;       /* owned; NUL-terminated, piece_len bytes: what the
                             token added to the output text (sched_event).
                             NULL with has_logprob: out of memory copying
                             it (text is still whole): the consumer cannot
                             list this token and must fail its logprobs */
    size_t   piece_len;
    /* the alternatives (sched_event.top_ids/top_lps: logprob descending,
     * ties by lower id, no -inf), n_top <= the request's top_logprobs; held
     * in the event, so they cost no allocation that could fail */
    int32_t  n_top;
    int32_t  top_ids[SCHED_MAX_TOP_LOGPROBS];
    float    top_lps[SCHED_MAX_TOP_LOGPROBS];
    /* TOKEN (so far, this token included) and DONE */
    int32_t  n_prompt, n_cached, n_generated;
    /* DONE only */
    enum finish_reason finish;
    int      status;      /* 0 ok; 400 request rejected; 500 engine failure */
    char    *error;       /* owned; message when status != 0 or FINISH_ERROR */
};

/* Frees a whole list (NULL-safe). */
void engine_events_free(struct engine_event *ev);

struct engine_stats {
    struct sched_stats sched;
    int32_t n_ctx;
    uint64_t prompts_tokenized;   /* prompt texts tokenized (the n choices of a
                                     request: once, prompt_group) */
};

typedef struct engine engine;

/* Starts the engine thread.  be and tok are borrowed and must outlive the
 * engine (engine_free joins the thread first). */
int  engine_create(const struct engine_config *cfg, backend *be, const tokenizer *tok,
                   engine **out);
/* Cancels everything live (DONE events are queued but nobody reads them
 * after this), joins the thread, frees.  NULL-safe. */
void engine_free(engine *e);

/* Queue a request; *id receives its id.  PS_ENOMEM, or PS_EINVAL for a
 * request no caller should build (more logit biases than SAMPLER_MAX_BIAS,
 * special_spans with parse_special or without a text prompt): every
 * problem of the request's content arrives as a DONE event with status
 * 400. */
int  engine_submit(engine *e, const struct engine_request *req, uint64_t *id);
/* engine_submit of reqs[0..n), ids[i] for reqs[i], all or none: the engine
 * thread takes them in one step, so the n choices of a prompt group are
 * scheduled together (a choice submitted after its group's first had
 * finished could not share its prompt's partial block). */
int  engine_submit_many(engine *e, const struct engine_request *reqs, int32_t n, uint64_t *ids);
/* Ask the engine to cancel `id` (no-op when already finished). */
int  engine_cancel(engine *e, uint64_t id);
/* Ask the engine to cancel every live request. */
void engine_cancel_all(engine *e);

/* Readable (an eventfd) when events are waiting; engine_take_events resets it. */
int  engine_events_fd(const engine *e);
/* Takes all queued events in order (caller frees with engine_events_free). */
struct engine_event *engine_take_events(engine *e);

/* Latest snapshot, refreshed by the engine thread after every step. */
void engine_get_stats(engine *e, struct engine_stats *st);

#endif /* PS_ENGINE_H */
