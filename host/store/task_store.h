/* task_store.h - finished /v1/tasks kept in SQLite, so that they survive a
 * restart (serve --task-store FILE).
 *
 * One row per finished task: its id, tenant (by name: engine tenant ids
 * follow the configured keys and may differ after a restart), creation
 * time, input, metadata, mode, status, rounds, call count, summary text,
 * trajectory (zlib-compressed: it repeats each round's prompt; read back
 * only when asked for) and its whole event log.  The file is in WAL mode
 * with synchronous=NORMAL: a put (one transaction) is durable against a
 * crash of the process (not of the machine) when it returns.  The store
 * keeps the newest `keep` rows (older ones are deleted at open, and as new
 * ones come every 64 puts), the window of finished tasks the server keeps
 * in memory.
 * One server uses a file at a time (exclusive locking from open to close).
 *
 * Not thread-safe: one thread (the server's loop) uses a store.
 */
#ifndef PS_STORE_TASK_STORE_H
#define PS_STORE_TASK_STORE_H

#include <stddef.h>
#include <stdint.h>

struct task_store;

/* One event of a stored task's log; ids run 1, 2, ... */
struct stored_event {
    int64_t     id;
    const char *type;   /* "task.created", ... */
    const char *data;   /* JSON object text */
    size_t      len;    /* strlen(data) */
};

/* A finished task as stored (borrowed strings; NULL where noted). */
struct stored_task {
    const char *id, *tenant, *input, *mode, *status, *summary;
    const char *metadata;    /* JSON object text, or NULL */
    const char *trajectory;  /* put: the trajectory document, or NULL (stored
                                zlib-compressed; task_store_trajectory reads it) */
    int         has_trajectory; /* each: the row has one */
    int64_t     created_unix_ms;
    int         rounds, calls;
    const struct stored_event *events;
    int64_t     n_events;
};

/* Open (creating it and its table when new) the store at `path`, keeping
 * the newest `keep` tasks (>= 1).  PS_OK, or PS_EIO / PS_EFORMAT with a
 * message naming the path and the reason (not a database, in use by
 * another process, a table of another shape). */
int  task_store_open(const char *path, int keep, struct task_store **out);
void task_store_close(struct task_store *s);

/* Store a finished task (replacing a row of the same id).  PS_OK, or
 * PS_EIO / PS_ENOMEM naming the reason (the store is unchanged). */
int task_store_put(struct task_store *s, const struct stored_task *t);

/* The newest `keep` stored tasks in the order they were created, each to
 * fn (its strings valid during the call; .trajectory NULL, .has_trajectory
 * set); fn returns 0 to go on.  A row that does not read back as a
 * task (a damaged event log, a missing field) is skipped and counted in
 * *skipped.  PS_OK, or PS_EIO naming SQLite's reason. */
typedef int (*task_store_fn)(void *ud, const struct stored_task *t);
int task_store_each(struct task_store *s, task_store_fn fn, void *ud, int *skipped);

/* A row's event log back from its blob (task_store_put's format: per
 * event its type's length byte, the type, its text's length in 4 bytes
 * little-endian, the text): *events and *strings, which holds the types
 * and texts NUL-terminated (caller frees both), *n of them.  PS_OK, or
 * PS_EFORMAT when the blob is damaged (a length past its end, an empty or
 * long type, a NUL inside a text) or memory ran out.  task_store_each uses
 * it; exposed for fuzzing. */
int task_store_events_parse(const void *blob, size_t len, struct stored_event **events, char **strings,
                            int64_t *n);

/* The trajectory stored with task `id`: *out (caller frees), *len bytes.
 * PS_ENOTFOUND (no such row, or it has none), PS_EFORMAT (it does not
 * decompress), PS_ENOMEM, PS_EIO. */
int task_store_trajectory(struct task_store *s, const char *id, char **out, size_t *len);

/* Rows in the store. */
int64_t task_store_count(struct task_store *s);

#endif /* PS_STORE_TASK_STORE_H */
