/* cmd_serve.c - `paraserve serve`: parse options (config.h), run the
 * server (server.h) until SIGTERM/SIGINT. */
#include <signal.h>
#include <stdio.h>

#include "cli_util.h"
#include "commands.h"
#include "common/status.h"
#include "server/config.h"
#include "server/server.h"

int cmd_serve(int argc, char **argv)
{
    server_hold_sighup();
    struct server_config cfg;
    server_config_defaults(&cfg);
    /* before validation: max_connections is checked against the limit serve
     * runs with (when raising fails, the current one: validation reads it) */
    (void)server_fd_limit_raise();
    int prc = server_config_parse_args(&cfg, argc, argv);
    if (prc)
        return prc > 0 ? 0 : 2;
    signal(SIGPIPE, SIG_IGN); /* a client that left must not kill the server */
    fprintf(stderr, "paraserve: allocator: %s\n", cli_allocator());
    int rc = server_run(&cfg);
    if (rc) {
        fprintf(stderr, "paraserve serve: %s\n", ps_error_last()[0] ? ps_error_last() : ps_status_str(rc));
        return 1;
    }
    return 0;
}
