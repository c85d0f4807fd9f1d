/* test_server_config.c - the `paraserve serve` config loader
 * (server_config_load_text / server_config_load): settings applied over the
 * defaults, errors naming the origin and key, API keys. */
#include <stdio.h>
#include <string.h>

#include "common/status.h"
#include "server/config.h"
#include "test_util.h"

int main(void)
{
    struct server_config c;
    server_config_defaults(&c);
    CHECK(server_config_load_text(&c, "{\"port\": 9000, \"kv_type\": \"q8\", \"prefix_cache\": false,"
                                      " \"api_keys\": [{\"key\": \"sk-1\", \"tenant\": \"a\", \"priority\": 2}]}",
                                  "t.json") == PS_OK);
    CHECK(c.port == 9000 && !strcmp(c.kv_type, "q8") && !c.prefix_cache && c.ctx == 2048);
    CHECK(c.n_api_keys == 1 && !strcmp(c.api_keys[0].key, "sk-1") && !strcmp(c.api_keys[0].tenant, "a") &&
          c.api_keys[0].priority == 2 && c.api_keys[0].max_priority == 1000000);

    server_config_defaults(&c);
    CHECK(server_config_load_text(&c, "{\"port\": 70000}", "t.json") == PS_EINVAL);
    CHECK_MSG(strstr(ps_error_last(), "config t.json: port must be an integer in [0, 65535]"), "%s", ps_error_last());
    CHECK(server_config_load_text(&c, "{\"nope\": 1}", "t.json") == PS_EINVAL);
    CHECK_MSG(strstr(ps_error_last(), "unknown key(s) 'nope'"), "%s", ps_error_last());
    CHECK(server_config_load_text(&c, "[1]", "t.json") == PS_EFORMAT);

    /* An API key server_config_add_key refuses: its detail is quoted in the
     * message.  It was passed as an argument while ps_error_set wrote the
     * same buffer (overlapping vsnprintf), which garbled it. */
    server_config_defaults(&c);
    CHECK(server_config_load_text(&c, "{\"api_keys\": [{\"key\": \"k\", \"tenant\": \"bad tenant!\"}]}",
                                  "t.json") == PS_EINVAL);
    CHECK_MSG(!strcmp(ps_error_last(), "config t.json: api_keys[0]: tenant 'bad tenant!': 1 to 63 characters "
                                       "of [A-Za-z0-9_.:-]"), "%s", ps_error_last());
    CHECK(server_config_load_text(&c, "{\"api_keys\": [{\"key\": \"k\"}, {\"key\": \"k\"}]}", "t.json") == PS_EINVAL);
    CHECK_MSG(strstr(ps_error_last(), "api_keys[1]: tenant 'default': duplicate API key"), "%s", ps_error_last());
    /* "none" labels the requests without a key in /metrics */
    server_config_defaults(&c);
    CHECK(server_config_load_text(&c, "{\"api_keys\": [{\"key\": \"k\", \"tenant\": \"none\"}]}",
                                  "t.json") == PS_EINVAL);
    CHECK_MSG(strstr(ps_error_last(), "api_keys[0]: tenant 'none' is reserved"), "%s", ps_error_last());
    CHECK(server_config_add_key(&c, "k", "nonesuch", 0, 10) == PS_OK);

    server_config_defaults(&c);
    CHECK(server_config_load(&c, "/nonexistent/paraserve.json") == PS_EIO);
    CHECK(server_config_load(&c, "configs/server.json") == PS_OK);
    CHECK(c.threads == 2 && !strcmp(c.model, "models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    TEST_DONE();
}
