/* test_http_floor.c - the keep-alive round-trip floor client
 * (http_floor.c) against the in-process mock agent: every timed request is
 * answered (the open phase's first round trips are counted apart), CPU
 * figures are filled in, bad arguments and a refused connection fail
 * cleanly. */
#include <stdio.h>
#include <string.h>

#include "common/status.h"
#include "orchestrator/http_floor.h"
#include "orchestrator/mock_agent.h"
#include "test_util.h"

static int64_t mock_cpu(void *ud) { return mock_agent_cpu_ns(ud); }

int main(void)
{
    struct mock_agent *m = mock_agent_start(0);
    CHECK(m != NULL);
    if (!m)
        TEST_DONE();
    int port = mock_agent_port(m);
    struct http_floor_stats st;

    /* 4 connections, 200 timed requests, immediate replies */
    int64_t before = mock_agent_requests(m);
    CHECK(http_floor_run(port, "/agent", "{\"sleep_ms\":0}", 4, 200, mock_cpu, m, &st) == PS_OK);
    CHECK(st.requests == 200);
    CHECK_MSG(mock_agent_requests(m) - before == 204, "%lld", (long long)(mock_agent_requests(m) - before));
    CHECK(st.client_cpu_s >= 0 && st.wall_s > 0 && st.peer_cpu_s >= 0);
    CHECK(st.opened == 4 && st.open_client_cpu_s >= 0 && st.open_peer_cpu_s >= 0);

    /* with the mock's reply timer, no CPU callback */
    CHECK(http_floor_run(port, "/agent", "{\"sleep_ms\":1}", 8, 40, NULL, NULL, &st) == PS_OK);
    CHECK(st.requests == 40 && st.peer_cpu_s == -1 && st.opened == 8 && st.open_peer_cpu_s == -1);

    /* bad arguments */
    CHECK(http_floor_run(port, "/agent", "{}", 0, 10, NULL, NULL, &st) == PS_EINVAL);
    CHECK(http_floor_run(port, "/agent", "{}", 4, 3, NULL, NULL, &st) == PS_EINVAL);
    CHECK(http_floor_run(port, "agent", "{}", 1, 1, NULL, NULL, &st) == PS_EINVAL);
    CHECK(http_floor_run(0, "/agent", "{}", 1, 1, NULL, NULL, &st) == PS_EINVAL);

    /* nobody listening */
    mock_agent_stop(m);
    CHECK(http_floor_run(port, "/agent", "{}", 2, 2, NULL, NULL, &st) == PS_EIO);
    CHECK(strstr(ps_error_last(), "connect") != NULL);
    TEST_DONE();
}
