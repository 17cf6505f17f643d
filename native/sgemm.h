// Single-precision GEMM of our own, so that the addon needs no BLAS library: packed panels, cache blocking and
// register-tiled micro-kernels (x86-64 AVX2+FMA, arm64 NEON, portable C), chosen at run time by CPU features.
#pragma once
#include <stdbool.h>
#include <stddef.h>

/** Row-major C = alpha·op(A)·op(B) + beta·C, op(A) [M, K], op(B) [K, N]; C is not read when beta is 0.
 *  Split over the pool's threads when it is large enough; each element's sum is the same whatever the split. */
void sgemm(bool transA, bool transB, size_t M, size_t N, size_t K, float alpha, const float *A, size_t lda, const float *B,
           size_t ldb, float beta, float *C, size_t ldc);

/** Below this many multiply-adds (about 20 µs on one core) waking the pool's workers costs more than it saves. */
#define SGEMM_PARALLEL_MACS ((size_t)1 << 19)

/** The same on the calling thread alone, for callers that split their own work over the pool. */
void sgemm_serial(bool transA, bool transB, size_t M, size_t N, size_t K, float alpha, const float *A, size_t lda,
                  const float *B, size_t ldb, float beta, float *C, size_t ldc);

/** The micro-kernel in use ("avx2-fma", "neon" or "portable"). */
const char *sgemm_kernel(void);

/** The kernels this CPU can run, best first, as a NULL-terminated list. */
const char *const *sgemm_kernels(void);

/** Switches to a kernel by name (for tests and benchmarks); false if this CPU cannot run it. */
bool sgemm_use(const char *name);

/** Sends the products of one transpose mode to the system BLAS (native/blas.h, which must be open) or back to ours. */
void sgemm_route(bool transA, bool transB, bool system);
