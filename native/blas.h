// A system BLAS found at run time and never linked (Accelerate on macOS; OpenBLAS, MKL or BLIS elsewhere), so that a
// machine that has one can use it for the products where it beats our sgemm, and a fresh machine builds unchanged.
#pragma once
#include <stdbool.h>
#include <stddef.h>

/** Opens the library at `path` and finds its cblas_sgemm; true on success. Its own threads are set to the pool's. */
bool blas_open(const char *path);

/** The library opened, or NULL. */
const char *blas_path(void);

/** Row-major C = alpha·op(A)·op(B) + beta·C on the system BLAS (blas_open must have succeeded). */
void blas_sgemm(bool transA, bool transB, size_t M, size_t N, size_t K, float alpha, const float *A, size_t lda, const float *B,
                size_t ldb, float beta, float *C, size_t ldc);
