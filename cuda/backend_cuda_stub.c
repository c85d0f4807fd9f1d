/* backend_cuda_stub.c - the CUDA backend's entry points in a build without
 * the CUDA toolkit (CMake compiles this file only then). */
#include "backend_cuda.h"

#include <stddef.h>

#include "common/status.h"

int cuda_device_count(void)
{
    return 0;
}

int backend_cuda_create(const struct model *m, const struct backend_config *cfg, backend **out)
{
    (void)m;
    (void)cfg;
    *out = NULL;
    return ps_error_set(PS_EUNSUPPORTED, "backend_cuda: built without CUDA");
}

int backend_cuda_forward_sample(backend *be, const struct batch_plan *plan,
                                const struct cuda_sample_params *params, const uint32_t *masks,
                                int32_t *tokens)
{
    (void)be; (void)plan; (void)params; (void)masks; (void)tokens;
    return ps_error_set(PS_EUNSUPPORTED, "backend_cuda: built without CUDA");
}

int backend_cuda_info(const backend *be, struct cuda_backend_info *out)
{
    (void)be; (void)out;
    return ps_error_set(PS_EUNSUPPORTED, "backend_cuda: built without CUDA");
}

int backend_cuda_fill_kv_random(backend *be, uint64_t seed)
{
    (void)be; (void)seed;
    return ps_error_set(PS_EUNSUPPORTED, "backend_cuda: built without CUDA");
}
