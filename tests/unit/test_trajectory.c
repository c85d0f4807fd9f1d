/* test_trajectory.c - the trajectory recorder on its own: prompts kept as
 * differences rebuild exactly (a difference inside a character, a prompt
 * shorter than the last, an empty one), text that is not UTF-8 is printed
 * as '?' (the document is JSON), steps left open or never ended, the
 * calls of each step by ledger position, the reward terms, the size
 * limit, and a line written whole or not at all. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/status.h"
#include "orchestrator/jbuf.h"
#include "orchestrator/json_alloc.h"
#include "orchestrator/trajectory.h"
#include "test_util.h"

static cJSON *print(const struct trajectory *tr, const struct trajectory_task *task)
{
    char stack[256];
    struct jbuf b;
    jbuf_init(&b, stack, sizeof stack);
    trajectory_print(tr, task, &b);
    CHECK(!b.oom);
    CHECK_MSG(utf8_valid(b.p, b.len), "not UTF-8 at byte %zu", utf8_invalid_at(b.p, b.len));
    cJSON *j = cJSON_ParseWithLength(b.p, b.len);
    CHECK_MSG(j != NULL, "does not parse: %s", b.p);
    jbuf_free(&b);
    return j;
}

static const cJSON *step(const cJSON *j, int i) { return cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "steps"), i); }

static const char *content(const cJSON *st, int i)
{
    const cJSON *m = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(st, "messages"), i);
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
    return cJSON_IsString(c) ? c->valuestring : NULL;
}

static double num(const cJSON *j, const char *obj, const char *key)
{
    return cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, obj), key));
}

static void test_prompts_rebuild(void)
{
    /* é = C3 A9, è = C3 A8: the second prompt differs inside a character */
    static const char *const prompts[] = { "Task: A\xc3\xa9\n", "Task: A\xc3\xa8\nResult: 1\n", "Task: A\xc3\xa8\nR",
                                           "", "Task: \xff bad byte\n" };
    static const char *const want[] = { "Task: A\xc3\xa9\n", "Task: A\xc3\xa8\nResult: 1\n", "Task: A\xc3\xa8\nR",
                                         "", "Task: ? bad byte\n" };
    const int n = (int)(sizeof prompts / sizeof *prompts);
    struct trajectory *tr = trajectory_new();
    CHECK(tr);
    for (int i = 0; i < n; i++) {
        CHECK(trajectory_begin(tr, i + 1, prompts[i], 0) == PS_OK);
        if (i == 1)
            continue;   /* left open: the next begin ends it without a completion */
        CHECK(trajectory_end(tr, "{\"wait\":true}\xe2\x82", 15, 1, NULL, 7) == PS_OK);   /* € cut */
    }
    CHECK(trajectory_steps(tr) == n);
    cJSON *ledger = cJSON_CreateArray(), *usage = cJSON_CreateArray();
    const struct trajectory_task task = { .id = "task_x", .input = "A", .mode = "model", .status = "failed",
                                          .error = "max_rounds", .system = "SYS", .ledger = ledger, .usage = usage,
                                          .rounds = n, .max_rounds = n };
    cJSON *j = print(tr, &task);
    for (int i = 0; i < n; i++) {
        const char *u = content(step(j, i), 1);
        CHECK_MSG(u && !strcmp(u, want[i]), "step %d prompt '%s'", i + 1, u ? u : "(none)");
        CHECK(content(step(j, i), 0) && !strcmp(content(step(j, i), 0), "SYS"));
    }
    const char *a = content(step(j, 0), 2);
    CHECK_MSG(a && !strcmp(a, "{\"wait\":true}??"), "completion '%s'", a ? a : "(none)");
    CHECK(!content(step(j, 1), 2) && cJSON_IsString(cJSON_GetObjectItemCaseSensitive(step(j, 1), "note")));
    CHECK(num(j, "measures", "decisions") == n && num(j, "measures", "decisions_compliant") == n - 1);
    CHECK(num(j, "rewards", "success") == 0 && num(j, "rewards", "efficiency") == 0);
    CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "rewards"), "diversity")));
    cJSON_Delete(j);
    trajectory_seal(tr);
    j = print(tr, &task);   /* sealed: the steps still print */
    CHECK(content(step(j, 4), 1) && !strcmp(content(step(j, 4), 1), "Task: ? bad byte\n"));
    cJSON_Delete(j);
    trajectory_free(tr);
    cJSON_Delete(ledger);
    cJSON_Delete(usage);
}

static void test_calls_and_rewards(void)
{
    struct trajectory *tr = trajectory_new();
    cJSON *ledger = cJSON_Parse("[{\"id\":\"c1\",\"to\":\"a\",\"status\":\"ok\"},{\"id\":\"c2\",\"to\":\"b\",\"status\":\"rejected\"},"
                                "{\"id\":\"c3\",\"to\":\"a\",\"status\":\"timeout\"},{\"id\":\"c4\",\"to\":\"c\",\"status\":\"ok\"}]");
    cJSON *usage = cJSON_Parse("[{\"round\":2,\"prompt_tokens\":10,\"cached_tokens\":4,\"completion_tokens\":3},"
                               "{\"round\":1,\"prompt_tokens\":8,\"cached_tokens\":0,\"completion_tokens\":5}]");
    CHECK(trajectory_begin(tr, 1, "p", 0) == PS_OK);
    CHECK(trajectory_end(tr, "{}", 2, 1, NULL, 1) == PS_OK);
    CHECK(trajectory_begin(tr, 2, "pq", 2) == PS_OK);
    CHECK(trajectory_end(tr, "{}", 2, 1, NULL, 1) == PS_OK);
    CHECK(trajectory_begin(tr, 3, "pqr", 4) == PS_OK);
    CHECK(trajectory_end(tr, "{}", 2, 1, NULL, 1) == PS_OK);
    const struct trajectory_task task = { .id = "t", .input = "i", .mode = "script", .status = "completed",
                                          .system = "S", .ledger = ledger, .usage = usage, .rounds = 3, .max_rounds = 8 };
    cJSON *j = print(tr, &task);
    const cJSON *c0 = cJSON_GetObjectItemCaseSensitive(step(j, 0), "calls");
    const cJSON *c1 = cJSON_GetObjectItemCaseSensitive(step(j, 1), "calls");
    const cJSON *c2 = cJSON_GetObjectItemCaseSensitive(step(j, 2), "calls");
    CHECK(cJSON_GetArraySize(c0) == 2 && !strcmp(cJSON_GetArrayItem(c0, 1)->valuestring, "c2"));
    CHECK(cJSON_GetArraySize(c1) == 2 && !strcmp(cJSON_GetArrayItem(c1, 0)->valuestring, "c3"));
    CHECK(cJSON_GetArraySize(c2) == 0);
    CHECK(num(step(j, 0), "usage", "completion_tokens") == 5 && num(step(j, 1), "usage", "completion_tokens") == 3);
    CHECK(!cJSON_GetObjectItemCaseSensitive(step(j, 2), "usage"));
    CHECK(num(j, "measures", "calls") == 4 && num(j, "measures", "calls_ok") == 2 && num(j, "measures", "calls_rejected") == 1);
    CHECK(num(j, "measures", "agents_distinct") == 2 && num(j, "measures", "completion_tokens") == 8);
    CHECK(num(j, "rewards", "success") == 1);
    CHECK_MSG(num(j, "rewards", "protocol_compliance") > 0.666 && num(j, "rewards", "protocol_compliance") < 0.667,
              "compliance %g", num(j, "rewards", "protocol_compliance"));
    CHECK_MSG(num(j, "rewards", "diversity") > 0.666 && num(j, "rewards", "diversity") < 0.667, "diversity %g",
              num(j, "rewards", "diversity"));
    CHECK_MSG(num(j, "rewards", "efficiency") > 0.666 && num(j, "rewards", "efficiency") < 0.667, "efficiency %g",
              num(j, "rewards", "efficiency"));
    cJSON_Delete(j);
    trajectory_free(tr);
    cJSON_Delete(ledger);
    cJSON_Delete(usage);
}

/* Past TRAJECTORY_MAX_BYTES no step is recorded and the document says
 * from which round. */
static void test_size_limit(void)
{
    const size_t big = (TRAJECTORY_MAX_BYTES / 4) + 1;
    char *p = malloc(big + 1);
    CHECK(p);
    if (!p)
        return;
    memset(p, 'x', big);
    p[big] = 0;
    struct trajectory *tr = trajectory_new();
    for (int r = 1; r <= 5; r++) {
        CHECK(trajectory_begin(tr, r, p, r - 1) == PS_OK);   /* each round makes one call */
        CHECK(trajectory_end(tr, "{}", 2, 1, NULL, 1) == PS_OK);
    }
    CHECK_MSG(trajectory_steps(tr) == 3 && trajectory_full(tr), "%d steps", trajectory_steps(tr));
    cJSON *ledger = cJSON_Parse("[{\"id\":\"c1\",\"to\":\"a\",\"status\":\"ok\"},{\"id\":\"c2\",\"to\":\"a\",\"status\":\"ok\"},"
                                "{\"id\":\"c3\",\"to\":\"a\",\"status\":\"ok\"},{\"id\":\"c4\",\"to\":\"a\",\"status\":\"rejected\"},"
                                "{\"id\":\"c5\",\"to\":\"a\",\"status\":\"ok\"}]");
    cJSON *usage = cJSON_CreateArray();
    const struct trajectory_task task = { .id = "t", .input = "i", .mode = "script", .status = "completed",
                                          .system = "S", .ledger = ledger, .usage = usage, .rounds = 5, .max_rounds = 5 };
    cJSON *j = print(tr, &task);
    const cJSON *tr_note = cJSON_GetObjectItemCaseSensitive(j, "truncated");
    CHECK_MSG(cJSON_IsString(tr_note) && strstr(tr_note->valuestring, "rounds from 4 on"), "truncated: %s",
              cJSON_IsString(tr_note) ? tr_note->valuestring : "(none)");
    /* the last recorded step has its own call, not those of the rounds left out */
    const cJSON *c3 = cJSON_GetObjectItemCaseSensitive(step(j, 2), "calls");
    CHECK_MSG(cJSON_GetArraySize(c3) == 1 && !strcmp(cJSON_GetArrayItem(c3, 0)->valuestring, "c3"), "%d calls",
              cJSON_GetArraySize(c3));
    CHECK(num(j, "rewards", "protocol_compliance") == 1 && num(j, "measures", "calls_rejected") == 1);
    cJSON_Delete(j);
    trajectory_free(tr);
    /* the budget counts bytes as printed: a control byte is 6 ("\u0001") */
    memset(p, 1, big / 6 + 1);
    p[big / 6 + 1] = 0;
    tr = trajectory_new();
    for (int r = 1; r <= 5; r++)
        CHECK(trajectory_begin(tr, r, p, 0) == PS_OK);
    CHECK_MSG(trajectory_steps(tr) == 3, "%d steps of control bytes", trajectory_steps(tr));
    trajectory_free(tr);
    cJSON_Delete(ledger);
    cJSON_Delete(usage);
    free(p);
}

static void test_line_write(void)
{
    char path[] = "/tmp/test_trajectory_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    fd = open(path, O_WRONLY | O_APPEND);
    CHECK(trajectory_line_write(fd, "{\"a\":1}", 7) == PS_OK && trajectory_line_write(fd, "{\"b\":2}", 7) == PS_OK);
    close(fd);
    char buf[64] = "";
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = 0;
    CHECK_MSG(!strcmp(buf, "{\"a\":1}\n{\"b\":2}\n"), "file '%s'", buf);
    unlink(path);
    fd = open("/dev/full", O_WRONLY | O_APPEND);
    if (fd >= 0) {
        CHECK(trajectory_line_write(fd, "{}", 2) == PS_EIO && strstr(ps_error_last(), "No space left"));
        close(fd);
    }
}

int main(void)
{
    test_prompts_rebuild();
    test_calls_and_rewards();
    test_size_limit();
    test_line_write();
    TEST_DONE();
}
