/* trajectory.h - a task's decisions kept as training data.
 *
 * One step per decision: the prompt the model read (the user message of
 * the decision chat; ORCH_SYSTEM_PROMPT is the system one), the text it
 * wrote (the completion; for a scripted task the action as printed - a
 * client's plan is a demonstration the model can be fine-tuned on), what
 * the orchestrator made of it, and the calls it made (the ledger entries
 * entered while it was decoded).  Prompts are kept as the difference from
 * the previous step's (each round's prompt extends the previous one but
 * for a context cut), so a task costs about one copy of its transcript.
 * The document is JSON, so UTF-8: a byte anywhere in it that is not part
 * of well-formed UTF-8 (a token budget can end a decision inside a
 * character) is printed as '?'.
 *
 * The printed document (proto/trajectory.schema.json) has each step as
 * chat messages (system, user, assistant), ready for supervised
 * fine-tuning, and per-task measures and reward terms for reinforcement
 * learning, after the paper's four (README, "Trajectories"):
 *   success              1 when the task completed, else 0
 *   protocol_compliance  steps whose action parsed whole with no call
 *                        rejected, over steps
 *   diversity            distinct agents over calls dispatched (null
 *                        without one)
 *   efficiency           completed: min(1, r / rounds) with r = 2 when a
 *                        call was dispatched (one decision for the calls,
 *                        one for the final), else 1; not completed: 0
 * Not thread-safe (the task's loop thread). */
#ifndef PS_ORCH_TRAJECTORY_H
#define PS_ORCH_TRAJECTORY_H

#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

struct jbuf;
struct trajectory;

/* A task's steps, prompts and completions as printed (each prompt whole,
 * JSON-escaped), are kept to this many bytes: past it no more steps are recorded and the
 * document says so ("truncated").  Without it a scripted task of N short
 * actions would print N prompts of up to N lines each - O(N^2) - on the
 * event loop. */
#define TRAJECTORY_MAX_BYTES (16 << 20)

/* NULL when out of memory. */
struct trajectory *trajectory_new(void);
void trajectory_free(struct trajectory *tr);

/* A decision starts: its round, its prompt (copied as the difference from
 * the previous step's) and the ledger's length (the step's calls are the
 * entries entered from there until the next step begins).  A step still
 * open ends first, without a completion.  Past TRAJECTORY_MAX_BYTES
 * nothing is recorded (PS_OK).  PS_OK or PS_ENOMEM (nothing recorded). */
int trajectory_begin(struct trajectory *tr, int round, const char *prompt, int ledger_len);

/* The open step ends (no-op without one): the completion (n bytes,
 * copied; NULL: the decision produced no text), whether its action parsed
 * whole, a note (NULL, or why it did not / was cut: copied) and how long
 * it took.  PS_OK or PS_ENOMEM (the step keeps no completion and says the
 * text was lost). */
int trajectory_end(struct trajectory *tr, const char *completion, size_t n, int valid, const char *note,
                   int64_t ms);

/* The task has ended: the copy of the last prompt (kept to find the next
 * step's difference) is freed. */
void trajectory_seal(struct trajectory *tr);

/* Steps recorded. */
int trajectory_steps(const struct trajectory *tr);
/* 1 once TRAJECTORY_MAX_BYTES is reached: no more steps will be kept. */
int trajectory_full(const struct trajectory *tr);

/* What the document says of the task besides its steps (borrowed). */
struct trajectory_task {
    const char  *id, *input, *mode, *status, *error /* NULL: none */, *system;
    const cJSON *metadata; /* NULL: none */
    const cJSON *output;   /* NULL: none yet */
    const cJSON *ledger;   /* [{id,to,args,after,status,result,error,ms,attempts}] */
    const cJSON *usage;    /* [{round,prompt_tokens,cached_tokens,completion_tokens}] */
    int          rounds, max_rounds;
    int64_t      created_unix_ms, wall_ms;
};

/* The trajectory document into b (b->oom when memory ran out). */
void trajectory_print(const struct trajectory *tr, const struct trajectory_task *task, struct jbuf *b);

/* text[0..len) and a newline appended to fd (opened O_APPEND) as one
 * line, whole or not at all: after a failed write the file is cut back to
 * its length before (ftruncate; when that fails too, a newline is tried so
 * that the next line starts on a line of its own).  One writer at a time.
 * PS_OK, or PS_EIO naming the system's error. */
int trajectory_line_write(int fd, const char *text, size_t len);

/* A trajectories file opened for trajectory_line_write (appending,
 * created 0644 when missing, close-on-exec): its fd, or -1 with PS_EIO
 * naming the path and the system's error. */
int trajectory_file_open(const char *path);

#endif /* PS_ORCH_TRAJECTORY_H */
