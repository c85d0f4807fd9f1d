/* fuzz_config.c - libFuzzer target for the `paraserve serve` config loader
 * (host/server/config.h: server_config_load_text, server_config_validate):
 * a config file is an external input.
 *
 * Input: the config text (up to its first NUL byte), applied over the
 * defaults; an accepted config is then validated.
 *
 * Aborts when loading fails without a message, returns a status outside
 * its contract, or leaves a string setting unterminated, an API key count
 * out of range, or an API key that server_config_add_key would refuse.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "common/status.h"
#include "server/config.h"

static void check_str(const char *s, size_t n)
{
    if (!memchr(s, 0, n))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_cstr(data, size);
    if (!text)
        return 0;
    static struct server_config c;
    server_config_defaults(&c);
    ps_error_clear();
    int st = server_config_load_text(&c, text, "fuzz.json");
    if (st != PS_OK && st != PS_EFORMAT && st != PS_EINVAL)
        abort();
    if (st != PS_OK && !ps_error_last()[0])
        abort();
    check_str(c.model, sizeof c.model);
    check_str(c.model_alias, sizeof c.model_alias);
    check_str(c.host, sizeof c.host);
    check_str(c.backend, sizeof c.backend);
    check_str(c.kv_type, sizeof c.kv_type);
    check_str(c.agents, sizeof c.agents);
    if (c.n_api_keys < 0 || c.n_api_keys > SERVER_MAX_API_KEYS)
        abort();
    for (int i = 0; i < c.n_api_keys; i++) {
        const struct server_api_key *k = &c.api_keys[i];
        check_str(k->key, sizeof k->key);
        check_str(k->tenant, sizeof k->tenant);
        if (!k->key[0] || !k->tenant[0] || k->priority > k->max_priority)
            abort();
    }
    if (st == PS_OK) {
        ps_error_clear();
        st = server_config_validate(&c);
        if (st != PS_OK && (st != PS_EINVAL || !ps_error_last()[0]))
            abort();
    }
    free(text);
    return 0;
}
