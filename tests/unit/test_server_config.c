/* test_server_config.c - the `paraserve serve` config loader
 * (server_config_load_text / server_config_load): settings applied over the
 * defaults, errors naming the origin and key, API keys; the CORS origin
 * list (cors.h). */
#include <stdio.h>
#include <string.h>

#include "common/status.h"
#include "server/config.h"
#include "server/cors.h"
#include "test_util.h"

static void test_cors(void)
{
    /* lists */
    CHECK(cors_list_validate("") == PS_OK);
    CHECK(cors_list_validate("*") == PS_OK);
    CHECK(cors_list_validate("https://app.example.com") == PS_OK);
    CHECK(cors_list_validate(" https://a.example.com:8443 ,http://localhost:3000,http://[::1]:8080") == PS_OK);
    static const char *const bad[] = { "app.example.com", "https://a.example.com/", "https://a.example.com/x",
                                       "ftp://a.example.com", "https://", "https://a b.com", "https://a.com:",
                                       "https://a.com:123456", "https://a.com,*", "https://a.com,,https://b.com",
                                       "http://[::1", "http://[]", "https://a.com\r\nX-Evil: 1" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_MSG(cors_list_validate(bad[i]) == PS_EINVAL, "accepted '%s'", bad[i]);
    CHECK(cors_list_validate("https://ok.com, https://a.com/x") == PS_EINVAL);
    CHECK_MSG(strstr(ps_error_last(), "'https://a.com/x' is not an origin"), "%s", ps_error_last());
    /* matching: exact entries, case-insensitive, "*" any, "" none */
    const char *list = "https://app.example.com, http://localhost:3000";
    CHECK(cors_origin_allowed(list, "https://app.example.com"));
    CHECK(cors_origin_allowed(list, "HTTPS://APP.example.com"));
    CHECK(cors_origin_allowed(list, "http://localhost:3000"));
    CHECK(!cors_origin_allowed(list, "http://localhost:3001"));
    CHECK(!cors_origin_allowed(list, "http://localhost"));
    CHECK(!cors_origin_allowed(list, "https://app.example.com.evil.com"));
    CHECK(!cors_origin_allowed(list, "https://app.example.co"));
    CHECK(!cors_origin_allowed(list, ""));
    CHECK(!cors_origin_allowed(list, NULL));
    CHECK(cors_origin_allowed("*", "null"));
    CHECK(!cors_origin_allowed("", "https://app.example.com"));
    /* the config key, validated with the rest */
    struct server_config c;
    server_config_defaults(&c);
    CHECK(!c.cors_origins[0]);
    snprintf(c.model, sizeof c.model, "m.gguf");
    CHECK(server_config_load_text(&c, "{\"cors_origins\": \"https://a.com/\"}", "t.json") == PS_OK);
    CHECK(server_config_validate(&c) == PS_EINVAL);
    CHECK_MSG(strstr(ps_error_last(), "cors_origins: 'https://a.com/'"), "%s", ps_error_last());
    CHECK(server_config_load_text(&c, "{\"cors_origins\": \"*\"}", "t.json") == PS_OK);
    CHECK(server_config_validate(&c) == PS_OK);
}

/* A local agent's tenant header: a decimal engine tenant id below the
 * server's tenant count, nothing else. */
static void test_tenant_id_parse(void)
{
    uint32_t id = 99;
    CHECK(server_tenant_id_parse("0", 3, &id) == PS_OK && id == 0);
    CHECK(server_tenant_id_parse("2", 3, &id) == PS_OK && id == 2);
    CHECK(server_tenant_id_parse("64", 65, &id) == PS_OK && id == 64);
    static const char *const bad[] = { "", "3", "65", "-1", "+1", " 1", "1 ", "01", "1x", "0x1", "1.0",
                                       "alpha", "4294967296", "99999999999", "1\r\nX: y" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        id = 99;
        CHECK_MSG(server_tenant_id_parse(bad[i], 3, &id) == PS_EINVAL && id == 99, "accepted '%s'", bad[i]);
    }
    CHECK(server_tenant_id_parse(NULL, 3, &id) == PS_EINVAL);
    CHECK(server_tenant_id_parse("7", 3, &id) == PS_EINVAL);
    CHECK_MSG(strstr(ps_error_last(), "'7' names no tenant of this server (ids 0 to 2)"), "%s", ps_error_last());
}

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

    /* idle_timeout_ms: 60 s by default, 0 (off) .. 1 h */
    server_config_defaults(&c);
    CHECK(c.idle_timeout_ms == 60000);
    CHECK(server_config_load_text(&c, "{\"idle_timeout_ms\": 0}", "t.json") == PS_OK && c.idle_timeout_ms == 0);
    CHECK(server_config_load_text(&c, "{\"idle_timeout_ms\": 2500}", "t.json") == PS_OK &&
          c.idle_timeout_ms == 2500);
    CHECK(server_config_load_text(&c, "{\"idle_timeout_ms\": -1}", "t.json") == PS_EINVAL);
    CHECK(server_config_load_text(&c, "{\"idle_timeout_ms\": 3600001}", "t.json") == PS_EINVAL);
    /* http_threads: the executor's I/O threads, 0 (none, the default) .. 64 */
    server_config_defaults(&c);
    CHECK(c.http_threads == 0);
    CHECK(server_config_load_text(&c, "{\"http_threads\": 4}", "t.json") == PS_OK && c.http_threads == 4);
    CHECK(server_config_load_text(&c, "{\"http_threads\": 65}", "t.json") == PS_EINVAL);
    CHECK(server_config_load_text(&c, "{\"http_threads\": -1}", "t.json") == PS_EINVAL);
    char *argv_ht[] = { "serve", "-m", "m.gguf", "--http-threads", "3" };
    CHECK(server_config_parse_args(&c, 5, argv_ht) == PS_OK && c.http_threads == 3);

    /* max_connections: at least 1, at most what RLIMIT_NOFILE leaves after
     * the reserve (config.h); unset (0) = the default derived from it */
    server_config_defaults(&c);
    snprintf(c.model, sizeof c.model, "m.gguf");
    CHECK(server_config_validate(&c) == PS_OK);
    CHECK(server_config_load_text(&c, "{\"max_connections\": 0}", "t.json") == PS_EINVAL);
    CHECK_MSG(strstr(ps_error_last(), "config t.json: max_connections must be an integer in [1,"), "%s",
              ps_error_last());
    CHECK(server_config_load_text(&c, "{\"max_connections\": \"8\"}", "t.json") == PS_EINVAL);
    CHECK(server_config_load_text(&c, "{\"max_connections\": 8}", "t.json") == PS_OK && c.max_connections == 8);
    CHECK(server_config_validate(&c) == PS_OK);
    const int64_t nofile = server_fd_limit();
    CHECK(nofile > 0);
    c.max_connections = (int32_t)(nofile - server_fd_reserve(nofile));
    CHECK(server_config_validate(&c) == PS_OK);
    c.max_connections++;
    CHECK(server_config_validate(&c) == PS_EINVAL);
    CHECK_MSG(strstr(ps_error_last(), "is more than the descriptor limit allows: RLIMIT_NOFILE"), "%s",
              ps_error_last());

    server_config_defaults(&c);
    CHECK(server_config_load(&c, "/nonexistent/paraserve.json") == PS_EIO);
    CHECK(server_config_load(&c, "configs/server.json") == PS_OK);
    CHECK(c.threads == 2 && !strcmp(c.model, "models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    test_cors();
    test_tenant_id_parse();
    TEST_DONE();
}
