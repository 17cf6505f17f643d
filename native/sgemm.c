// The BLIS design: C is computed in MR×NR tiles by a micro-kernel that streams a packed MR-row sliver of A and a
// packed NR-column sliver of B over a KC-long slice of K. A KC×NC block of B is packed to stay in L3, an MC×KC
// block of A to stay in L2, and a sliver of B in L1 while the kernel walks down the A block.
#include "sgemm.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "pool.h"

#if defined(__x86_64__) || defined(_M_X64)
#define HAVE_X86 1
#include <immintrin.h>
#ifdef _MSC_VER
#include <intrin.h>
#define TARGET_AVX2
#else
#define TARGET_AVX2 __attribute__((target("avx2,fma")))
#endif
#endif
#if defined(__aarch64__) || defined(_M_ARM64)
#define HAVE_NEON 1
#include <arm_neon.h>
#endif


#define MAX_MR 8
#define MAX_NR 16

// c (an MR×NR tile, row stride ldc) = alpha·Σ_k a[k·MR + i]·b[k·NR + j] + beta·c, beta 0 (c not read) or 1.
typedef void (*micro_kernel)(size_t kc, const float *a, const float *b, float *c, size_t ldc, float alpha, float beta);

struct kernel {
  const char *name;
  size_t mr, nr, mc, kc, nc;
  micro_kernel run;
};

static void finish_tile(size_t mr, size_t nr, float acc[MAX_MR][MAX_NR], float *c, size_t ldc, float alpha, float beta) {
  for (size_t i = 0; i < mr; i++)
    for (size_t j = 0; j < nr; j++) c[i * ldc + j] = beta == 0 ? alpha * acc[i][j] : alpha * acc[i][j] + c[i * ldc + j];
}

// Portable: a 4×8 tile, small enough for 16 SSE or NEON registers once the compiler vectorises the j loops.
static void kernel_portable(size_t kc, const float *a, const float *b, float *c, size_t ldc, float alpha, float beta) {
  float acc[MAX_MR][MAX_NR] = {{0}};
  for (size_t k = 0; k < kc; k++, a += 4, b += 8)
    for (size_t i = 0; i < 4; i++)
      for (size_t j = 0; j < 8; j++) acc[i][j] += a[i] * b[j];
  finish_tile(4, 8, acc, c, ldc, alpha, beta);
}

#ifdef HAVE_X86
// AVX2 + FMA: a 6×16 tile in 12 ymm accumulators, two loads of B and six broadcasts of A per k.
TARGET_AVX2 static void kernel_avx2(size_t kc, const float *a, const float *b, float *c, size_t ldc, float alpha, float beta) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  // The tile of C is read at the end (when accumulating): fetch it now, while the products run.
  if (beta != 0)
    for (size_t i = 0; i < 6; i++) _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0), _mm_prefetch((const char *)(c + i * ldc + 15), _MM_HINT_T0);
  for (size_t k = 0; k < kc; k++, a += 6, b += 16) {
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
    __m256 x = _mm256_broadcast_ss(a);
    c00 = _mm256_fmadd_ps(x, b0, c00), c01 = _mm256_fmadd_ps(x, b1, c01);
    x = _mm256_broadcast_ss(a + 1);
    c10 = _mm256_fmadd_ps(x, b0, c10), c11 = _mm256_fmadd_ps(x, b1, c11);
    x = _mm256_broadcast_ss(a + 2);
    c20 = _mm256_fmadd_ps(x, b0, c20), c21 = _mm256_fmadd_ps(x, b1, c21);
    x = _mm256_broadcast_ss(a + 3);
    c30 = _mm256_fmadd_ps(x, b0, c30), c31 = _mm256_fmadd_ps(x, b1, c31);
    x = _mm256_broadcast_ss(a + 4);
    c40 = _mm256_fmadd_ps(x, b0, c40), c41 = _mm256_fmadd_ps(x, b1, c41);
    x = _mm256_broadcast_ss(a + 5);
    c50 = _mm256_fmadd_ps(x, b0, c50), c51 = _mm256_fmadd_ps(x, b1, c51);
  }
  const __m256 al = _mm256_set1_ps(alpha);
  __m256 rows[6][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  for (size_t i = 0; i < 6; i++, c += ldc)
    for (size_t h = 0; h < 2; h++) {
      __m256 v = _mm256_mul_ps(al, rows[i][h]);
      if (beta != 0) v = _mm256_add_ps(v, _mm256_loadu_ps(c + 8 * h));
      _mm256_storeu_ps(c + 8 * h, v);
    }
}

static bool cpu_has_avx2_fma(void) {
#ifdef _MSC_VER
  int r[4];
  __cpuid(r, 1);
  const bool fma = r[2] & (1 << 12), osxsave = r[2] & (1 << 27), avx = r[2] & (1 << 28);
  if (!(fma && osxsave && avx) || (_xgetbv(0) & 6) != 6) return false;
  __cpuidex(r, 7, 0);
  return r[1] & (1 << 5);
#else
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
}
#endif

#ifdef HAVE_NEON
// NEON: an 8×12 tile in 24 q-register accumulators, each row's A broadcast by lane.
static void kernel_neon(size_t kc, const float *a, const float *b, float *c, size_t ldc, float alpha, float beta) {
  float32x4_t acc[8][3];
  for (size_t i = 0; i < 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = vdupq_n_f32(0);
  for (size_t k = 0; k < kc; k++, a += 8, b += 12) {
    const float32x4_t b0 = vld1q_f32(b), b1 = vld1q_f32(b + 4), b2 = vld1q_f32(b + 8);
    const float32x4_t a0 = vld1q_f32(a), a1 = vld1q_f32(a + 4);
#define ROW(i, v, lane)                                 \
  acc[i][0] = vfmaq_laneq_f32(acc[i][0], b0, v, lane); \
  acc[i][1] = vfmaq_laneq_f32(acc[i][1], b1, v, lane); \
  acc[i][2] = vfmaq_laneq_f32(acc[i][2], b2, v, lane);
    ROW(0, a0, 0) ROW(1, a0, 1) ROW(2, a0, 2) ROW(3, a0, 3) ROW(4, a1, 0) ROW(5, a1, 1) ROW(6, a1, 2) ROW(7, a1, 3)
#undef ROW
  }
  for (size_t i = 0; i < 8; i++, c += ldc)
    for (size_t h = 0; h < 3; h++) {
      float32x4_t v = vmulq_n_f32(acc[i][h], alpha);
      if (beta != 0) v = vaddq_f32(v, vld1q_f32(c + 4 * h));
      vst1q_f32(c + 4 * h, v);
    }
}
#endif

// Block sizes: an MC×KC block of A fits a 256 KiB+ L2, a KC-long sliver of B a 32 KiB L1.
static const struct kernel KERNELS[] = {
#ifdef HAVE_X86
    {"avx2-fma", 6, 16, 144, 256, 3072, kernel_avx2},
#endif
#ifdef HAVE_NEON
    {"neon", 8, 12, 128, 256, 3072, kernel_neon},
#endif
    {"portable", 4, 8, 128, 256, 2048, kernel_portable},
};
#define N_KERNELS (sizeof KERNELS / sizeof KERNELS[0])

static bool supported(const struct kernel *k) {
#ifdef HAVE_X86
  if (k->run == kernel_avx2) return cpu_has_avx2_fma();
#endif
  (void)k;
  return true;
}

static const struct kernel *active;

static const struct kernel *current(void) {
  if (!active) {
    const char *want = getenv("LOCALMIM_GEMM_KERNEL");
    if (!want || !sgemm_use(want))
      for (size_t i = 0; i < N_KERNELS && !active; i++)
        if (supported(&KERNELS[i])) active = &KERNELS[i];
  }
  return active;
}

const char *sgemm_kernel(void) { return current()->name; }

const char *const *sgemm_kernels(void) {
  static const char *names[N_KERNELS + 1];
  size_t n = 0;
  for (size_t i = 0; i < N_KERNELS; i++)
    if (supported(&KERNELS[i])) names[n++] = KERNELS[i].name;
  names[n] = NULL;
  return names;
}

bool sgemm_use(const char *name) {
  for (size_t i = 0; i < N_KERNELS; i++)
    if (!strcmp(KERNELS[i].name, name) && supported(&KERNELS[i])) {
      active = &KERNELS[i];
      return true;
    }
  return false;
}

// An operand as strides: element (row r, column c) of op(X) at x[r·rs + c·cs].
struct view {
  const float *x;
  size_t rs, cs;
};

// Rows [i0, i0 + m) of the operand x over K slice [p0, p0 + kc), as w-row slivers, k-major within each:
// out[s][k][w], zero-padded. A packs this way directly; B as its transpose (its columns are Bᵀ's rows). Written for a
// constant w (pack below), so that the compiler unrolls and vectorises the inner loop.
static inline void pack_w(const size_t w, struct view x, size_t i0, size_t m, size_t p0, size_t kc, float *out) {
  for (size_t s = 0; s < m; s += w, out += w * kc) {
    const size_t rows = m - s < w ? m - s : w;
    const float *src = x.x + (i0 + s) * x.rs + p0 * x.cs;
    // Either each k's w values lie side by side (cs > 1, rs = 1), or each row is a contiguous run over k: both are
    // read in order, never one sliver row down a stride, which at a power-of-two leading dimension thrashes the caches.
    if (rows == w)
      for (size_t k = 0; k < kc; k++)
        for (size_t r = 0; r < w; r++) out[k * w + r] = src[r * x.rs + k * x.cs];
    else
      for (size_t k = 0; k < kc; k++)
        for (size_t r = 0; r < w; r++) out[k * w + r] = r < rows ? src[r * x.rs + k * x.cs] : 0;
  }
}

static void pack(size_t w, struct view x, size_t i0, size_t m, size_t p0, size_t kc, float *out) {
  switch (w) {
    case 4:
      pack_w(4, x, i0, m, p0, kc, out);
      break;
    case 6:
      pack_w(6, x, i0, m, p0, kc, out);
      break;
    case 8:
      pack_w(8, x, i0, m, p0, kc, out);
      break;
    case 12:
      pack_w(12, x, i0, m, p0, kc, out);
      break;
    default:
      pack_w(16, x, i0, m, p0, kc, out);
  }
}

// Per-thread packing buffers, grown on demand and kept: a fresh allocation each call would fault its pages in again.
static THREAD_LOCAL float *buffer;
static THREAD_LOCAL size_t buffer_floats;

static float *scratch(size_t floats) {
  if (floats > buffer_floats) {
    free(buffer);
    buffer = malloc((floats + 16) * sizeof(float));
    buffer_floats = buffer ? floats : 0;
  }
  // 64-byte aligned, for the kernels' vector loads.
  return buffer ? (float *)(((uintptr_t)buffer + 63) & ~(uintptr_t)63) : NULL;
}

static void tile(const struct kernel *kr, size_t mr, size_t nr, size_t kc, const float *a, const float *b, float *c, size_t ldc,
                 float alpha, float beta) {
  if (mr == kr->mr && nr == kr->nr) {
    kr->run(kc, a, b, c, ldc, alpha, beta);
    return;
  }
  float edge[MAX_MR * MAX_NR];
  kr->run(kc, a, b, edge, kr->nr, alpha, 0);
  for (size_t i = 0; i < mr; i++)
    for (size_t j = 0; j < nr; j++) c[i * ldc + j] = beta == 0 ? edge[i * kr->nr + j] : edge[i * kr->nr + j] + c[i * ldc + j];
}

static size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

static void scale(size_t M, size_t N, float beta, float *C, size_t ldc) {
  for (size_t i = 0; i < M; i++)
    for (size_t j = 0; j < N; j++) C[i * ldc + j] = beta == 0 ? 0 : beta * C[i * ldc + j];
}

static void gemm_blocked(struct view A, struct view B, size_t M, size_t N, size_t K, float alpha, float beta, float *C, size_t ldc) {
  const struct kernel *kr = current();
  if (K == 0 || alpha == 0) {
    scale(M, N, beta, C, ldc);
    return;
  }
  // A general beta is applied first, so that the kernels only ever overwrite (0) or accumulate (1).
  if (beta != 0 && beta != 1) scale(M, N, beta, C, ldc), beta = 1;
  const size_t KC = K < kr->kc ? K : kr->kc, NC = round_up(N < kr->nc ? N : kr->nc, kr->nr), MC = round_up(M < kr->mc ? M : kr->mc, kr->mr);
  float *bp = scratch(KC * NC + MC * KC), *ap = bp + KC * NC;
  if (!bp) abort();  // out of memory for a few MiB of packing space: nothing sensible is left to do
  for (size_t jc = 0; jc < N; jc += NC) {
    const size_t nc = N - jc < NC ? N - jc : NC;
    for (size_t pc = 0; pc < K; pc += KC) {
      const size_t kc = K - pc < KC ? K - pc : KC;
      const float b_ = pc == 0 ? beta : 1;
      pack(kr->nr, (struct view){B.x, B.cs, B.rs}, jc, nc, pc, kc, bp);
      for (size_t ic = 0; ic < M; ic += MC) {
        const size_t mc = M - ic < MC ? M - ic : MC;
        pack(kr->mr, A, ic, mc, pc, kc, ap);
        for (size_t jr = 0; jr < nc; jr += kr->nr)
          for (size_t ir = 0; ir < mc; ir += kr->mr)
            tile(kr, mc - ir < kr->mr ? mc - ir : kr->mr, nc - jr < kr->nr ? nc - jr : kr->nr, kc, ap + ir * kc, bp + jr * kc,
                 C + (ic + ir) * ldc + jc + jr, ldc, alpha, b_);
      }
    }
  }
}

static struct view view_of(const float *x, size_t ld, bool trans) { return trans ? (struct view){x, 1, ld} : (struct view){x, ld, 1}; }

void sgemm_serial(bool ta, bool tb, size_t M, size_t N, size_t K, float alpha, const float *A, size_t lda, const float *B, size_t ldb,
                  float beta, float *C, size_t ldc) {
  gemm_blocked(view_of(A, lda, ta), view_of(B, ldb, tb), M, N, K, alpha, beta, C, ldc);
}

// Threads split C into bands of whole tiles, by rows or by columns; each band is a GEMM of its own, so every element
// is summed in the same order as on one thread.
struct split {
  struct view A, B;
  size_t M, N, K, ldc, unit;
  bool by_rows;
  float alpha, beta, *C;
};

static void band(void *ctx, size_t part, size_t parts) {
  const struct split *s = ctx;
  const size_t extent = s->by_rows ? s->M : s->N, units = (extent + s->unit - 1) / s->unit;
  const size_t lo = units * part / parts * s->unit, hi0 = units * (part + 1) / parts * s->unit;
  const size_t hi = part + 1 == parts || hi0 > extent ? extent : hi0;
  if (lo >= hi) return;
  if (s->by_rows) {
    struct view A = s->A;
    A.x += lo * A.rs;
    gemm_blocked(A, s->B, hi - lo, s->N, s->K, s->alpha, s->beta, s->C + lo * s->ldc, s->ldc);
  } else {
    struct view B = s->B;
    B.x += lo * B.cs;
    gemm_blocked(s->A, B, s->M, hi - lo, s->K, s->alpha, s->beta, s->C + lo, s->ldc);
  }
}

static bool routed[2][2];

void sgemm_route(bool ta, bool tb, bool system) { routed[ta][tb] = system; }

void sgemm(bool ta, bool tb, size_t M, size_t N, size_t K, float alpha, const float *A, size_t lda, const float *B, size_t ldb,
           float beta, float *C, size_t ldc) {
  if (routed[ta][tb]) {
    blas_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  const struct kernel *kr = current();
  const size_t macs = M * N * K, rows = (M + kr->mr - 1) / kr->mr, cols = (N + kr->nr - 1) / kr->nr;
  const size_t t = macs < SGEMM_PARALLEL_MACS ? 1 : pool_threads();
  // Each band packs its share of one operand and all of the other: split the way that packs less per thread, unless
  // that way has a single tile.
  bool by_rows = M * K / t + K * N <= M * K + K * N / t;
  if ((by_rows ? rows : cols) < 2) by_rows = !by_rows;
  const size_t parts = t == 1 ? 1 : pool_parts(by_rows ? rows : cols, 1);
  if (parts == 1) {
    sgemm_serial(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  struct split s = {view_of(A, lda, ta), view_of(B, ldb, tb), M, N, K, ldc, by_rows ? kr->mr : kr->nr, by_rows, alpha, beta, C};
  pool_run(parts, band, &s);
}
