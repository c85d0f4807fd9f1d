/* task_store.c - finished tasks in SQLite (see task_store.h). */
#include "store/task_store.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "common/grow.h"
#include "common/status.h"

/* A task's events in one blob: per event, its type's length (1 byte), the
 * type, its text's length (4 bytes, little-endian) and the text; ids are
 * the positions, from 1. */
#define EVENT_TYPE_MAX 32
#define EVENT_DATA_MAX (1u << 30)
/* Rows past `keep` are deleted every this many puts (the delete walks
 * `keep` rows back from the newest), so the table holds at most keep +
 * PRUNE_EVERY - 1; task_store_each reads the newest `keep`. */
#define PRUNE_EVERY 64

struct task_store {
    sqlite3      *db;
    char         *path;
    int           keep;
    unsigned      puts;     /* since open: every PRUNE_EVERY-th put prunes */
    sqlite3_stmt *put, *prune, *get_traj;
    unsigned char *blob;
    size_t        blob_cap;
};

static const char SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS tasks ("
    " id TEXT PRIMARY KEY, tenant TEXT NOT NULL, created_ms INTEGER NOT NULL, input TEXT NOT NULL,"
    " metadata TEXT, mode TEXT NOT NULL, status TEXT NOT NULL, rounds INTEGER NOT NULL, calls INTEGER NOT NULL,"
    " summary TEXT NOT NULL, trajectory BLOB, traj_len INTEGER, events BLOB NOT NULL)";

static int db_error(struct task_store *s, const char *what)
{
    const int code = sqlite3_errcode(s->db);
    return ps_error_set(code == SQLITE_NOTADB || code == SQLITE_CORRUPT ? PS_EFORMAT : PS_EIO,
                        "task store %s: %s: %s", s->path, what, sqlite3_errmsg(s->db));
}

/* A failure while taking the file: "in use" when another connection
 * holds it (another server), else SQLite's reason. */
static int open_error(struct task_store *s, const char *what)
{
    const int code = sqlite3_errcode(s->db);
    if (code == SQLITE_BUSY || code == SQLITE_LOCKED)
        return ps_error_set(PS_EIO, "task store %s: in use by another process (another server?)", s->path);
    return db_error(s, what);
}

int task_store_open(const char *path, int keep, struct task_store **out)
{
    *out = NULL;
    struct task_store *s = calloc(1, sizeof *s);
    if (!s || !(s->path = strdup(path))) {
        free(s);
        return ps_error_set(PS_ENOMEM, "out of memory");
    }
    s->keep = keep > 0 ? keep : 1;
    int rc;
    if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        rc = s->db ? db_error(s, "cannot open") : ps_error_set(PS_ENOMEM, "out of memory");
        goto fail;
    }
    /* One server per file, held for its life (exclusive locking, taken by
     * the first write below): a second one is refused at once rather than
     * waiting on the event loop at each put.  Readers such as the sqlite3
     * shell wait until the server has stopped. */
    sqlite3_busy_timeout(s->db, 0);
    /* journal_mode returns a row; the others none */
    if (sqlite3_exec(s->db, "PRAGMA locking_mode=EXCLUSIVE", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(s->db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(s->db, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL) != SQLITE_OK) {
        rc = open_error(s, "cannot set up");
        goto fail;
    }
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        rc = open_error(s, "cannot lock");
        goto fail;
    }
    if (sqlite3_exec(s->db, SCHEMA, NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        rc = db_error(s, "cannot set up");
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        goto fail;
    }
    /* a table of another shape (an older file, another program's): its
     * columns are checked once here rather than failing every put */
    sqlite3_stmt *probe = NULL;
    if (sqlite3_prepare_v2(s->db, "SELECT id, tenant, created_ms, input, metadata, mode, status, rounds, calls, "
                                  "summary, trajectory, traj_len, events FROM tasks LIMIT 0", -1, &probe, NULL) !=
        SQLITE_OK) {
        rc = db_error(s, "not a paraserve task store");
        goto fail;
    }
    sqlite3_finalize(probe);
    if (sqlite3_prepare_v2(s->db, "INSERT OR REPLACE INTO tasks (id, tenant, created_ms, input, metadata, mode, "
                                  "status, rounds, calls, summary, trajectory, traj_len, events) "
                                  "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                           -1, &s->put, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->db, "DELETE FROM tasks WHERE rowid <= (SELECT rowid FROM tasks ORDER BY rowid DESC "
                                  "LIMIT 1 OFFSET ?1)", -1, &s->prune, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->db, "SELECT trajectory, traj_len FROM tasks WHERE id = ?1", -1, &s->get_traj,
                           NULL) != SQLITE_OK) {
        rc = db_error(s, "cannot prepare");
        goto fail;
    }
    /* rows past `keep` (a smaller --keep-tasks than before) go now, once */
    sqlite3_bind_int64(s->prune, 1, s->keep);
    if (sqlite3_step(s->prune) != SQLITE_DONE) {
        rc = db_error(s, "cannot delete old tasks");
        goto fail;
    }
    sqlite3_reset(s->prune);
    *out = s;
    return PS_OK;
fail:
    task_store_close(s);
    return rc;
}

void task_store_close(struct task_store *s)
{
    if (!s)
        return;
    sqlite3_finalize(s->put);
    sqlite3_finalize(s->prune);
    sqlite3_finalize(s->get_traj);
    sqlite3_close(s->db);
    free(s->blob);
    free(s->path);
    free(s);
}

static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The events as one blob in s->blob; its length, or -1 (ps_error_set). */
static int64_t events_blob(struct task_store *s, const struct stored_task *t)
{
    size_t n = 0;
    for (int64_t i = 0; i < t->n_events; i++) {
        const struct stored_event *e = &t->events[i];
        const size_t tl = strlen(e->type);
        if (tl == 0 || tl > EVENT_TYPE_MAX || e->len > EVENT_DATA_MAX || e->id != i + 1) {
            ps_error_set(PS_EINVAL, "task store: event %lld of %s cannot be stored", (long long)(i + 1), t->id);
            return -1;
        }
        unsigned char *nb = ps_grow(s->blob, &s->blob_cap, n + 1 + tl + 4 + e->len, 1, 4096);
        if (!nb) {
            ps_error_set(PS_ENOMEM, "out of memory");
            return -1;
        }
        s->blob = nb;
        nb[n] = (unsigned char)tl;
        memcpy(nb + n + 1, e->type, tl);
        put_u32(nb + n + 1 + tl, (uint32_t)e->len);
        memcpy(nb + n + 1 + tl + 4, e->data, e->len);
        n += 1 + tl + 4 + e->len;
    }
    return (int64_t)n;
}

int task_store_put(struct task_store *s, const struct stored_task *t)
{
    const int64_t bl = events_blob(s, t);
    if (bl < 0)
        return ps_error_last_status();
    /* the trajectory repeats each round's prompt whole: it compresses well
     * (zlib level 1: ~300 MB/s on the loop) */
    unsigned char *z = NULL;
    uLongf zl = 0;
    const size_t tl = t->trajectory ? strlen(t->trajectory) : 0;
    if (t->trajectory) {
        zl = compressBound((uLong)tl);
        if (!(z = malloc(zl ? zl : 1)))
            return ps_error_set(PS_ENOMEM, "out of memory");
        if (compress2(z, &zl, (const Bytef *)t->trajectory, (uLong)tl, 1) != Z_OK) {
            free(z);
            return ps_error_set(PS_ENOMEM, "task store: cannot compress the trajectory of %s", t->id);
        }
    }
    if (sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
        free(z);
        return db_error(s, "cannot begin");
    }
    sqlite3_stmt *q = s->put;
    sqlite3_reset(q);
    sqlite3_clear_bindings(q);
    int ok = sqlite3_bind_text(q, 1, t->id, -1, SQLITE_STATIC) == SQLITE_OK &&
             sqlite3_bind_text(q, 2, t->tenant, -1, SQLITE_STATIC) == SQLITE_OK &&
             sqlite3_bind_int64(q, 3, t->created_unix_ms) == SQLITE_OK &&
             sqlite3_bind_text(q, 4, t->input, -1, SQLITE_STATIC) == SQLITE_OK &&
             (t->metadata ? sqlite3_bind_text(q, 5, t->metadata, -1, SQLITE_STATIC) : sqlite3_bind_null(q, 5)) ==
                 SQLITE_OK &&
             sqlite3_bind_text(q, 6, t->mode, -1, SQLITE_STATIC) == SQLITE_OK &&
             sqlite3_bind_text(q, 7, t->status, -1, SQLITE_STATIC) == SQLITE_OK &&
             sqlite3_bind_int(q, 8, t->rounds) == SQLITE_OK && sqlite3_bind_int(q, 9, t->calls) == SQLITE_OK &&
             sqlite3_bind_text(q, 10, t->summary, -1, SQLITE_STATIC) == SQLITE_OK &&
             (z ? sqlite3_bind_blob64(q, 11, z, (sqlite3_uint64)zl, SQLITE_STATIC) : sqlite3_bind_null(q, 11)) ==
                 SQLITE_OK &&
             (z ? sqlite3_bind_int64(q, 12, (sqlite3_int64)tl) : sqlite3_bind_null(q, 12)) == SQLITE_OK &&
             sqlite3_bind_blob64(q, 13, bl ? (const void *)s->blob : "", (sqlite3_uint64)bl, SQLITE_STATIC) == SQLITE_OK;
    int rc = PS_OK;
    if (!ok || sqlite3_step(q) != SQLITE_DONE)
        rc = db_error(s, "cannot store a task");
    sqlite3_reset(q);
    sqlite3_clear_bindings(q);
    /* the newest `keep` rows stay (rowids grow with each put) */
    if (!rc && ++s->puts % PRUNE_EVERY == 0) {
        sqlite3_bind_int64(s->prune, 1, s->keep);
        if (sqlite3_step(s->prune) != SQLITE_DONE)
            rc = db_error(s, "cannot delete old tasks");
        sqlite3_reset(s->prune);
    }
    if (!rc && sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        rc = db_error(s, "cannot commit");
    if (rc)
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    free(z);
    return rc;
}

int task_store_trajectory(struct task_store *s, const char *id, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    sqlite3_stmt *q = s->get_traj;
    sqlite3_reset(q);
    sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    int rc = PS_OK, step = sqlite3_step(q);
    if (step == SQLITE_ROW && sqlite3_column_type(q, 0) == SQLITE_BLOB) {
        const void *z = sqlite3_column_blob(q, 0);
        const uLong zl = (uLong)sqlite3_column_bytes(q, 0);
        const sqlite3_int64 tl = sqlite3_column_int64(q, 1);
        char *text = tl >= 0 && tl < (1LL << 31) ? malloc((size_t)tl + 1) : NULL;
        uLongf got = (uLongf)tl;
        if (!text)
            rc = ps_error_set(tl >= 0 && tl < (1LL << 31) ? PS_ENOMEM : PS_EFORMAT, "task store: the trajectory of %s: %s",
                              id, tl >= 0 && tl < (1LL << 31) ? "out of memory" : "a bad length");
        else if (uncompress((Bytef *)text, &got, z, zl) != Z_OK || got != (uLongf)tl) {
            free(text);
            rc = ps_error_set(PS_EFORMAT, "task store: the trajectory of %s does not read back", id);
        } else {
            text[tl] = 0;
            *out = text;
            *len = (size_t)tl;
        }
    } else if (step == SQLITE_ROW || step == SQLITE_DONE) {
        rc = ps_error_set(PS_ENOTFOUND, "task store: no trajectory of %s", id);
    } else {
        rc = db_error(s, "cannot read a trajectory");
    }
    sqlite3_reset(q);
    sqlite3_clear_bindings(q);
    return rc;
}

/* The event log of a row back from its blob: *events (caller frees both
 * *events and *strings, which holds each type and text NUL-terminated)
 * and *n; 0, or -1 when the blob is damaged or memory ran out. */
static int events_parse(const unsigned char *b, size_t len, struct stored_event **events, char **strings,
                        int64_t *n);

int task_store_events_parse(const void *blob, size_t len, struct stored_event **events, char **strings, int64_t *n)
{
    if (events_parse(blob ? blob : "", blob ? len : 0, events, strings, n))
        return ps_error_set(PS_EFORMAT, "task store: a damaged event log (or out of memory)");
    return PS_OK;
}

static int events_parse(const unsigned char *b, size_t len, struct stored_event **events, char **strings,
                        int64_t *n)
{
    *events = NULL;
    *strings = NULL;
    *n = 0;
    size_t cap = 0, off = 0, w = 0;
    struct stored_event *ev = NULL;
    /* each item gains two NULs and loses its 5 length bytes: len + 1 holds them */
    char *str = malloc(len + 1);
    if (!str)
        return -1;
    while (off < len) {
        const size_t tl = b[off];
        if (tl == 0 || tl > EVENT_TYPE_MAX || len - off < 1 + tl + 4)
            goto bad;
        const uint32_t dl = get_u32(b + off + 1 + tl);
        if (dl > EVENT_DATA_MAX || len - off - 1 - tl - 4 < dl)
            goto bad;
        const unsigned char *data = b + off + 1 + tl + 4;
        if (memchr(b + off + 1, 0, tl) || memchr(data, 0, dl))
            goto bad;   /* a NUL inside: not one of ours */
        struct stored_event *ne = ps_grow(ev, &cap, (size_t)*n + 1, sizeof *ne, 16);
        if (!ne)
            goto bad;
        ev = ne;
        /* offsets until the buffer is final */
        ev[*n] = (struct stored_event){ .id = *n + 1, .type = (const char *)(uintptr_t)w,
                                        .data = (const char *)(uintptr_t)(w + tl + 1), .len = dl };
        memcpy(str + w, b + off + 1, tl);
        str[w + tl] = 0;
        memcpy(str + w + tl + 1, data, dl);
        str[w + tl + 1 + dl] = 0;
        w += tl + 1 + dl + 1;
        (*n)++;
        off += 1 + tl + 4 + dl;
    }
    for (int64_t i = 0; i < *n; i++) {
        ev[i].type = str + (uintptr_t)ev[i].type;
        ev[i].data = str + (uintptr_t)ev[i].data;
    }
    *events = ev;
    *strings = str;
    return 0;
bad:
    free(ev);
    free(str);
    *n = 0;
    return -1;
}

int task_store_each(struct task_store *s, task_store_fn fn, void *ud, int *skipped)
{
    *skipped = 0;
    sqlite3_stmt *q = NULL;
    /* the newest `keep` (by when they were stored), in creation order: the
     * order the task list showed them in */
    if (sqlite3_prepare_v2(s->db, "SELECT id, tenant, created_ms, input, metadata, mode, status, rounds, calls, "
                                  "summary, trajectory IS NOT NULL, events FROM (SELECT *, rowid AS r FROM tasks "
                                  "ORDER BY rowid DESC LIMIT ?1) ORDER BY created_ms, r", -1, &q, NULL) != SQLITE_OK)
        return db_error(s, "cannot read");
    sqlite3_bind_int64(q, 1, s->keep);
    int rc = PS_OK, step;
    while ((step = sqlite3_step(q)) == SQLITE_ROW) {
        const char *text[11] = { 0 };
        static const int cols[] = { 0, 1, 3, 4, 5, 6, 9 };
        for (size_t i = 0; i < sizeof cols / sizeof *cols; i++)
            text[cols[i]] = (const char *)sqlite3_column_text(q, cols[i]);
        const unsigned char *blob = sqlite3_column_blob(q, 11);
        const size_t bl = blob ? (size_t)sqlite3_column_bytes(q, 11) : 0;
        struct stored_event *ev = NULL;
        char *strings = NULL;
        int64_t n = 0;
        if (!text[0] || !text[1] || !text[3] || !text[5] || !text[6] || !text[9] ||
            events_parse(blob ? blob : (const unsigned char *)"", bl, &ev, &strings, &n) || n == 0) {
            free(ev);
            free(strings);
            (*skipped)++;
            continue;
        }
        const struct stored_task t = {
            .id = text[0], .tenant = text[1], .input = text[3], .metadata = text[4], .mode = text[5],
            .status = text[6], .summary = text[9], .has_trajectory = sqlite3_column_int(q, 10) != 0,
            .created_unix_ms = sqlite3_column_int64(q, 2), .rounds = sqlite3_column_int(q, 7),
            .calls = sqlite3_column_int(q, 8), .events = ev, .n_events = n,
        };
        const int stop = fn(ud, &t);
        free(ev);
        free(strings);
        if (stop)
            break;
    }
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        rc = db_error(s, "cannot read");
    sqlite3_finalize(q);
    return rc;
}

int64_t task_store_count(struct task_store *s)
{
    sqlite3_stmt *q = NULL;
    int64_t n = -1;
    if (sqlite3_prepare_v2(s->db, "SELECT count(*) FROM tasks", -1, &q, NULL) == SQLITE_OK &&
        sqlite3_step(q) == SQLITE_ROW)
        n = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    return n;
}
