// A Node-API addon for tfjs's wasm backend, reading and writing Float32Arrays in place (views of the wasm heap, so no
// copies): our own sgemm (native/sgemm.c), row-major C = op(A) · op(B) over a batch, a transpose, and single-pass
// kernels for the work around them (LayerNorm, erf-GELU, Linear, column sums, attention, HOG binning, AdamW): one loop
// where tfjs runs several ops. It needs no library beyond the C runtime; every loop that pays for it is split over
// native/pool.c's threads.
#define _USE_MATH_DEFINES
#include <math.h>
#include <node_api.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "pool.h"
#include "sgemm.h"

#define CHECK(call)                                                       \
  if ((call) != napi_ok) {                                                \
    napi_throw_error(env, NULL, "localmim_native: bad arguments"); \
    return NULL;                                                          \
  }

static float *floats(napi_env env, napi_value v, size_t *length) {
  napi_typedarray_type type;
  void *data;
  if (napi_get_typedarray_info(env, v, &type, length, &data, NULL, NULL) != napi_ok || type != napi_float32_array) return NULL;
  return (float *)data;
}

struct batch_gemm {
  bool ta, tb;
  size_t M, N, K;
  const float *a, *b;
  float *c;
  bool ab, bb;
  size_t batch;
};

typedef void (*gemm_fn)(bool, bool, size_t, size_t, size_t, float, const float *, size_t, const float *, size_t, float, float *, size_t);

static void gemm_item(const struct batch_gemm *g, size_t i, gemm_fn f) {
  const size_t M = g->M, N = g->N, K = g->K;
  f(g->ta, g->tb, M, N, K, 1.0f, g->a + (g->ab ? i * M * K : 0), g->ta ? M : K, g->b + (g->bb ? i * K * N : 0), g->tb ? K : N, 0.0f,
    g->c + i * M * N, N);
}

static void gemm_items(void *ctx, size_t part, size_t parts) {
  const struct batch_gemm *g = ctx;
  for (size_t i = g->batch * part / parts; i < g->batch * (part + 1) / parts; i++) gemm_item(g, i, sgemm_serial);
}

// gemm(transA, transB, batch, M, N, K, a, b, c, aBatched, bBatched)
static napi_value gemm(napi_env env, napi_callback_info info) {
  size_t argc = 11;
  napi_value argv[11];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 11) {
    napi_throw_error(env, NULL, "localmim_native: gemm takes 11 arguments");
    return NULL;
  }
  bool ta, tb, ab, bb;
  int32_t batch, M, N, K;
  CHECK(napi_get_value_bool(env, argv[0], &ta));
  CHECK(napi_get_value_bool(env, argv[1], &tb));
  CHECK(napi_get_value_int32(env, argv[2], &batch));
  CHECK(napi_get_value_int32(env, argv[3], &M));
  CHECK(napi_get_value_int32(env, argv[4], &N));
  CHECK(napi_get_value_int32(env, argv[5], &K));
  CHECK(napi_get_value_bool(env, argv[9], &ab));
  CHECK(napi_get_value_bool(env, argv[10], &bb));
  size_t la, lb, lc;
  float *a = floats(env, argv[6], &la), *b = floats(env, argv[7], &lb), *c = floats(env, argv[8], &lc);
  if (!a || !b || !c || la < (size_t)(ab ? batch : 1) * M * K || lb < (size_t)(bb ? batch : 1) * K * N || lc < (size_t)batch * M * N) {
    napi_throw_error(env, NULL, "localmim_native: gemm buffers are too small for the shapes");
    return NULL;
  }
  const struct batch_gemm g = {ta, tb, (size_t)M, (size_t)N, (size_t)K, a, b, c, ab, bb, (size_t)batch};
  // Many small products (attention's heads) split by product; a few large ones split inside sgemm.
  if ((size_t)batch >= pool_threads()) pool_run(pool_parts((size_t)batch * M * N * K, SGEMM_PARALLEL_MACS), gemm_items, (void *)&g);
  else
    for (int32_t i = 0; i < batch; i++) gemm_item(&g, (size_t)i, sgemm);
  return NULL;
}

// transpose(x, shape, perm, out): out = x permuted, any rank up to 6, as tfjs's Transpose kernel.
static napi_value transpose(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  uint32_t rank;
  CHECK(napi_get_array_length(env, argv[1], &rank));
  if (argc != 4 || rank < 1 || rank > 6) {
    napi_throw_error(env, NULL, "localmim_native: transpose takes x, shape (rank 1-6), perm, out");
    return NULL;
  }
  int64_t shape[6], perm[6], stride[6], outShape[6];
  for (uint32_t i = 0; i < rank; i++) {
    napi_value v;
    int32_t x;
    CHECK(napi_get_element(env, argv[1], i, &v));
    CHECK(napi_get_value_int32(env, v, &x));
    shape[i] = x;
    CHECK(napi_get_element(env, argv[2], i, &v));
    CHECK(napi_get_value_int32(env, v, &x));
    perm[i] = x;
  }
  stride[rank - 1] = 1;
  for (int i = (int)rank - 2; i >= 0; i--) stride[i] = stride[i + 1] * shape[i + 1];
  size_t n = 1, lx, lo;
  for (uint32_t i = 0; i < rank; i++) {
    outShape[i] = shape[perm[i]];
    n *= (size_t)shape[i];
  }
  float *x = floats(env, argv[0], &lx), *out = floats(env, argv[3], &lo);
  if (!x || !out || lx < n || lo < n) {
    napi_throw_error(env, NULL, "localmim_native: transpose buffers are too small");
    return NULL;
  }
  // Walk the output in order; the innermost output axis reads the input at a fixed stride.
  int64_t idx[6] = {0};
  int64_t inner = outShape[rank - 1], innerStride = stride[perm[rank - 1]];
  for (size_t o = 0; o < n; o += (size_t)inner) {
    int64_t base = 0;
    for (uint32_t i = 0; i + 1 < rank; i++) base += idx[i] * stride[perm[i]];
    for (int64_t j = 0; j < inner; j++) out[o + (size_t)j] = x[base + j * innerStride];
    for (int i = (int)rank - 2; i >= 0; i--) {
      if (++idx[i] < outShape[i]) break;
      idx[i] = 0;
    }
  }
  return NULL;
}

// The call's arguments: n of them, the trailing nd numbers into d.
static bool call_args(napi_env env, napi_callback_info info, size_t n, napi_value *argv, size_t nd, double *d) {
  size_t argc = n;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != n) return false;
  for (size_t i = 0; i < nd; i++)
    if (napi_get_value_double(env, argv[n - nd + i], &d[i]) != napi_ok) return false;
  return true;
}

// argv[0..nf) as Float32Arrays holding at least need[i] elements.
static bool arrays(napi_env env, napi_value *argv, size_t nf, const size_t *need, float **f) {
  for (size_t i = 0; i < nf; i++) {
    size_t len;
    f[i] = floats(env, argv[i], &len);
    if (need[i] && (!f[i] || len < need[i])) return false;  // an empty array may have no data pointer
  }
  return true;
}

static napi_value fail(napi_env env, const char *what) {
  napi_throw_error(env, NULL, what);
  return NULL;
}

// The elementwise kernels split their rows over the pool in contiguous ranges, so results do not depend on
// timing, only on the machine's core count.
typedef void (*range_fn)(void *ctx, size_t part, size_t begin, size_t end);
struct ranges {
  range_fn body;
  void *ctx;
  size_t n;
};

static void run_range(void *p, size_t part, size_t parts) {
  const struct ranges *r = p;
  r->body(r->ctx, part, r->n * part / parts, r->n * (part + 1) / parts);
}

static void parallel_for(size_t n, size_t grain, range_fn body, void *ctx) {
  struct ranges r = {body, ctx, n};
  pool_run(pool_parts(n, grain), run_range, &r);
}

#define GRAIN 32768

struct norm_args {
  const float *x, *w, *b, *dy, *mean, *rstd;
  float *y, *mean_out, *rstd_out, *dx, *partial;
  size_t C;
  float eps;
};

// layerNorm(x, w, b, y, mean, rstd, rows, cols, eps), x [rows, cols]: per row, y = (x − mean)·rstd·w + b with
// rstd = 1/√(biased variance + eps); mean and rstd [rows] are what the backward pass needs.
static void layer_norm_rows(void *ctx, size_t part, size_t r0, size_t r1) {
  const struct norm_args *a = ctx;
  const size_t C = a->C;
  (void)part;
  for (size_t r = r0; r < r1; r++) {
    const float *xr = a->x + r * C;
    float *yr = a->y + r * C;
    double s = 0, ss = 0;
    for (size_t c = 0; c < C; c++) s += xr[c];
    const float mean = (float)(s / C);
    for (size_t c = 0; c < C; c++) ss += (double)(xr[c] - mean) * (xr[c] - mean);
    const float rstd = 1.0f / sqrtf((float)(ss / C) + a->eps);
    for (size_t c = 0; c < C; c++) yr[c] = (xr[c] - mean) * rstd * a->w[c] + a->b[c];
    a->mean_out[r] = mean;
    a->rstd_out[r] = rstd;
  }
}

static napi_value layer_norm(napi_env env, napi_callback_info info) {
  napi_value argv[9];
  double d[3];
  float *f[6];
  if (!call_args(env, info, 9, argv, 3, d)) return fail(env, "localmim_native: layerNorm takes 6 arrays, rows, cols, eps");
  size_t R = (size_t)d[0], C = (size_t)d[1];
  const size_t need[6] = {R * C, C, C, R * C, R, R};
  if (!arrays(env, argv, 6, need, f)) return fail(env, "localmim_native: layerNorm arrays are too small");
  struct norm_args a = {.x = f[0], .w = f[1], .b = f[2], .y = f[3], .mean_out = f[4], .rstd_out = f[5], .C = C, .eps = (float)d[2]};
  parallel_for(R, GRAIN / (C ? C : 1), layer_norm_rows, &a);
  return NULL;
}

// layerNormGrad(dy, x, w, mean, rstd, dx, dw, db, rows, cols): with x̂ = (x − mean)·rstd and g = dy·w per row,
// dx = rstd·(g − mean(g) − x̂·mean(g·x̂)); dw = Σ_rows dy·x̂, db = Σ_rows dy (each part sums its rows into
// `partial`, [parts, 2, cols], then the parts are added in order).
static void layer_norm_grad_rows(void *ctx, size_t part, size_t r0, size_t r1) {
  const struct norm_args *a = ctx;
  const size_t C = a->C;
  float *dw = a->partial + part * 2 * C, *db = dw + C;
  for (size_t r = r0; r < r1; r++) {
    const float *dyr = a->dy + r * C, *xr = a->x + r * C;
    float *dxr = a->dx + r * C;
    const float mean = a->mean[r], rstd = a->rstd[r];
    double sg = 0, sgx = 0;
    for (size_t c = 0; c < C; c++) {
      const float xh = (xr[c] - mean) * rstd, g = dyr[c] * a->w[c];
      sg += g;
      sgx += (double)g * xh;
      dw[c] += dyr[c] * xh;
      db[c] += dyr[c];
    }
    const float mg = (float)(sg / C), mgx = (float)(sgx / C);
    for (size_t c = 0; c < C; c++) dxr[c] = rstd * (dyr[c] * a->w[c] - mg - (xr[c] - mean) * rstd * mgx);
  }
}

static napi_value layer_norm_grad(napi_env env, napi_callback_info info) {
  napi_value argv[10];
  double d[2];
  float *f[8];
  if (!call_args(env, info, 10, argv, 2, d)) return fail(env, "localmim_native: layerNormGrad takes 8 arrays, rows, cols");
  size_t R = (size_t)d[0], C = (size_t)d[1];
  const size_t need[8] = {R * C, R * C, C, R, R, R * C, C, C};
  if (!arrays(env, argv, 8, need, f)) return fail(env, "localmim_native: layerNormGrad arrays are too small");
  const size_t grain = GRAIN / (C ? C : 1), P = pool_parts(R, grain);
  float *partial = calloc(P * 2 * C, sizeof(float));
  if (!partial) return fail(env, "localmim_native: out of memory");
  struct norm_args a = {.dy = f[0], .x = f[1], .w = f[2], .mean = f[3], .rstd = f[4], .dx = f[5], .partial = partial, .C = C};
  parallel_for(R, grain, layer_norm_grad_rows, &a);
  for (size_t c = 0; c < C; c++) f[6][c] = f[7][c] = 0;
  for (size_t p = 0; p < P; p++)
    for (size_t c = 0; c < C; c++) {
      f[6][c] += partial[p * 2 * C + c];
      f[7][c] += partial[p * 2 * C + C + c];
    }
  free(partial);
  return NULL;
}

// e^y for y ≤ 0 in plain arithmetic, so that the loops below vectorise: y = n·ln2 + r, |r| ≤ ln2/2, and e^r
// by its degree-6 Taylor polynomial (relative error ~1e-7).
static inline float exp_nonpositive(float y) {
  y = y < -87.0f ? -87.0f : y;
  const float n = (y * 1.44269504f + 12582912.0f) - 12582912.0f;  // round to nearest by 1.5·2²³, a vectorisable floor
  const float r = (y - n * 0.693359375f) + n * 2.12194440e-4f;
  const float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
  const int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// Φ(x), the standard normal CDF, given e = e^(−x²/2): erf by Abramowitz & Stegun 7.1.26 (absolute error 1.5e-7),
// whose e^(−z²) at z = |x|/√2 is that same e.
static inline float normal_cdf(float x, float e) {
  const float t = 1.0f / (1.0f + 0.3275911f * fabsf(x) * (float)M_SQRT1_2);
  const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  const float tail = 0.5f * poly * e;
  return x >= 0 ? 1.0f - tail : tail;
}

struct gelu_args {
  const float *x, *dy;
  float *y, *dx;
};

// gelu(x, y, n): y = x·Φ(x) (PyTorch's exact GELU).
static void gelu_range(void *ctx, size_t part, size_t i0, size_t i1) {
  const struct gelu_args *a = ctx;
  (void)part;
  for (size_t i = i0; i < i1; i++) a->y[i] = a->x[i] * normal_cdf(a->x[i], exp_nonpositive(-0.5f * a->x[i] * a->x[i]));
}

static napi_value gelu(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  double d[1];
  float *f[2];
  if (!call_args(env, info, 3, argv, 1, d)) return fail(env, "localmim_native: gelu takes x, y, n");
  const size_t n = (size_t)d[0], need[2] = {n, n};
  if (!arrays(env, argv, 2, need, f)) return fail(env, "localmim_native: gelu arrays are too small");
  struct gelu_args a = {.x = f[0], .y = f[1]};
  parallel_for(n, GRAIN, gelu_range, &a);
  return NULL;
}

// geluGrad(dy, x, dx, n): dx = dy·(Φ(x) + x·φ(x)), φ(x) = e^(−x²/2)/√(2π).
static void gelu_grad_range(void *ctx, size_t part, size_t i0, size_t i1) {
  const struct gelu_args *a = ctx;
  const float k = (float)(0.5 * M_2_SQRTPI * M_SQRT1_2);  // 1/√(2π)
  (void)part;
  for (size_t i = i0; i < i1; i++) {
    const float e = exp_nonpositive(-0.5f * a->x[i] * a->x[i]);
    a->dx[i] = a->dy[i] * (normal_cdf(a->x[i], e) + a->x[i] * k * e);
  }
}

static napi_value gelu_grad(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  double d[1];
  float *f[3];
  if (!call_args(env, info, 4, argv, 1, d)) return fail(env, "localmim_native: geluGrad takes dy, x, dx, n");
  const size_t n = (size_t)d[0], need[3] = {n, n, n};
  if (!arrays(env, argv, 3, need, f)) return fail(env, "localmim_native: geluGrad arrays are too small");
  struct gelu_args a = {.dy = f[0], .x = f[1], .dx = f[2]};
  parallel_for(n, GRAIN, gelu_grad_range, &a);
  return NULL;
}

// columnSum(x, out, rows, cols): out = Σ_rows x for x [rows, cols] (a bias's gradient). One thread: this memory-bound
// pass split by columns ran slower on 2 cores.
static napi_value column_sum(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  double d[2];
  float *f[2];
  if (!call_args(env, info, 4, argv, 2, d)) return fail(env, "localmim_native: columnSum takes x, out, rows, cols");
  const size_t R = (size_t)d[0], C = (size_t)d[1], need[2] = {R * C, C};
  if (!arrays(env, argv, 2, need, f)) return fail(env, "localmim_native: columnSum arrays are too small");
  float *out = f[1];
  for (size_t c = 0; c < C; c++) out[c] = 0;
  for (size_t r = 0; r < R; r++)
    for (size_t c = 0; c < C; c++) out[c] += f[0][r * C + c];
  return NULL;
}

// adamw(p, g, m, v, pOut, mOut, vOut, n, beta1, beta2, eps, decay, sqrtBc2, stepSize): PyTorch's AdamW on one
// tensor: m' = β1·m + (1−β1)·g, v' = β2·v + (1−β2)·g², p' = decay·p − stepSize·m' / (√v'/√bc2 + eps).
struct adam {
  float b1, b2, c1, c2, eps, decay, sqrt_bc2, lr;
};

// Separate restrict-qualified arguments let the compiler vectorise without runtime alias checks.
static void adamw_loop(size_t n, struct adam h, const float *restrict p, const float *restrict g, const float *restrict m,
                       const float *restrict v, float *restrict pOut, float *restrict mOut, float *restrict vOut) {
  for (size_t i = 0; i < n; i++) {
    mOut[i] = m[i] * h.b1 + g[i] * h.c1;
    vOut[i] = v[i] * h.b2 + g[i] * g[i] * h.c2;
    pOut[i] = p[i] * h.decay - mOut[i] / (sqrtf(vOut[i]) / h.sqrt_bc2 + h.eps) * h.lr;
  }
}

struct adam_args {
  struct adam h;
  float *f[7];
};

static void adamw_range(void *ctx, size_t part, size_t i0, size_t i1) {
  struct adam_args *a = ctx;
  float **f = a->f;
  (void)part;
  adamw_loop(i1 - i0, a->h, f[0] + i0, f[1] + i0, f[2] + i0, f[3] + i0, f[4] + i0, f[5] + i0, f[6] + i0);
}

static napi_value adamw(napi_env env, napi_callback_info info) {
  napi_value argv[14];
  double d[7];
  float *f[7];
  if (!call_args(env, info, 14, argv, 7, d)) return fail(env, "localmim_native: adamw takes 7 arrays and 7 numbers");
  const size_t n = (size_t)d[0], need[7] = {n, n, n, n, n, n, n};
  if (!arrays(env, argv, 7, need, f)) return fail(env, "localmim_native: adamw arrays are too small");
  // 1 − β in double, then rounded, as tfjs rounds its scalar operands.
  const struct adam h = {(float)d[1], (float)d[2], (float)(1 - d[1]), (float)(1 - d[2]), (float)d[3], (float)d[4], (float)d[5], (float)d[6]};
  struct adam_args a = {.h = h};
  memcpy(a.f, f, sizeof a.f);
  parallel_for(n, GRAIN, adamw_range, &a);
  return NULL;
}

// linear(x, w, b, y, M, N, K): y = x·wᵀ + b (PyTorch's Linear, w [N, K]): the bias rows first, then sgemm adds onto them.
static napi_value linear(napi_env env, napi_callback_info info) {
  napi_value argv[7];
  double d[3];
  float *f[4];
  if (!call_args(env, info, 7, argv, 3, d)) return fail(env, "localmim_native: linear takes x, w, b, y, M, N, K");
  const size_t M = (size_t)d[0], N = (size_t)d[1], K = (size_t)d[2], need[4] = {M * K, N * K, N, M * N};
  if (!arrays(env, argv, 4, need, f)) return fail(env, "localmim_native: linear arrays are too small");
  for (size_t r = 0; r < M; r++) memcpy(f[3] + r * N, f[2], N * sizeof(float));
  sgemm(false, true, M, N, K, 1.0f, f[0], K, f[1], K, 1.0f, f[3], N);
  return NULL;
}

// Softmax of each of the `rows` rows of p [rows, n] in place.
static void softmax_rows(float *p, size_t rows, size_t n) {
  for (size_t r = 0; r < rows; r++, p += n) {
    float max = p[0], sum = 0;
    for (size_t j = 1; j < n; j++) max = p[j] > max ? p[j] : max;
    for (size_t j = 0; j < n; j++) sum += p[j] = exp_nonpositive(p[j] - max);
    const float inv = 1.0f / sum;
    for (size_t j = 0; j < n; j++) p[j] *= inv;
  }
}

// Attention reads each head's q, k and v straight from the fused projection qkv [B·T, 3W] (row t of sample b holds
// q, k, v, each head-major) by stride, and writes its output into the head's columns of out [B·T, W]: no splits,
// no transposes. probs [B·H, T, T] is kept for the backward pass. An additive bias [n, H, T, T] (n > 0) is added to
// the scores of sample b as its row b mod n (Swin's relative positions and window masks).
struct heads {
  size_t B, T, H, W, hd, n;
  float scale;
};

// The trailing (B, T, H, scale, n) of a call with nf arrays, argv[1] being qkv [B·T, 3W]; W and hd follow from its length.
static bool heads_args(napi_env env, napi_callback_info info, size_t nf, napi_value *argv, struct heads *a) {
  double d[5];
  size_t len;
  if (!call_args(env, info, nf + 5, argv, 5, d) || !floats(env, argv[1], &len)) return false;
  *a = (struct heads){(size_t)d[0], (size_t)d[1], (size_t)d[2], 0, 0, (size_t)d[4], (float)d[3]};
  if (a->B * a->T * a->H == 0 || len % (3 * a->B * a->T) != 0 || (a->n && a->B % a->n)) return false;
  a->W = len / (3 * a->B * a->T);
  a->hd = a->W / a->H;
  return a->hd * a->H == a->W;
}

// The (sample, head) pairs split over the pool: a part takes whole heads of the samples b ≡ r (mod R), R = n with a
// bias (so that the samples adding into one bias row stay on one thread, in order), else B.
struct heads_job {
  struct heads a;
  float **f;
  void (*one)(const struct heads *a, float **f, size_t b, size_t h, float *scratch);
};

static void heads_part(void *ctx, size_t part, size_t parts) {
  const struct heads_job *j = ctx;
  const size_t R = j->a.n ? j->a.n : j->a.B, pairs = R * j->a.H, T = j->a.T;
  float *scratch = malloc(T * T * sizeof(float));
  if (!scratch) abort();
  for (size_t p = pairs * part / parts; p < pairs * (part + 1) / parts; p++)
    for (size_t b = p / j->a.H; b < j->a.B; b += R) j->one(&j->a, j->f, b, p % j->a.H, scratch);
  free(scratch);
}

static void for_heads(const struct heads *a, float **f, void (*one)(const struct heads *, float **, size_t, size_t, float *)) {
  const struct heads_job j = {*a, f, one};
  const size_t R = a->n ? a->n : a->B, macs = a->B * a->H * a->T * a->T * a->hd;
  pool_run(macs < SGEMM_PARALLEL_MACS ? 1 : pool_parts(R * a->H, 1), heads_part, (void *)&j);
}

// P = softmax(scale·Q Kᵀ + bias), O = P V for sample b, head h.
static void attention_head(const struct heads *a, float **f, size_t b, size_t h, float *scratch) {
  const size_t T = a->T, W = a->W, ld = 3 * W;
  const float *q = f[1] + b * T * ld + h * a->hd, *k = q + W, *v = q + 2 * W;
  float *p = f[2] + (b * a->H + h) * T * T;
  (void)scratch;
  sgemm_serial(false, true, T, T, a->hd, a->scale, q, ld, k, ld, 0.0f, p, T);
  if (a->n) {
    const float *bias = f[3] + ((b % a->n) * a->H + h) * T * T;
    for (size_t i = 0; i < T * T; i++) p[i] += bias[i];
  }
  softmax_rows(p, T, T);
  sgemm_serial(false, false, T, a->hd, T, 1.0f, p, T, v, ld, 0.0f, f[0] + b * T * W + h * a->hd, W);
}

// attention(out, qkv, probs, bias, B, T, H, scale, n): per sample b and head h, P = softmax(scale·Q Kᵀ + bias), O = P V.
static napi_value attention(napi_env env, napi_callback_info info) {
  napi_value argv[9];
  struct heads a;
  float *f[4];
  if (!heads_args(env, info, 4, argv, &a)) return fail(env, "localmim_native: attention takes out, qkv, probs, bias, B, T, H, scale, n");
  const size_t T = a.T, W = a.W, need[4] = {a.B * T * W, 3 * a.B * T * W, a.B * a.H * T * T, a.n * a.H * T * T};
  if (!arrays(env, argv, 4, need, f)) return fail(env, "localmim_native: attention arrays are too small");
  for_heads(&a, f, attention_head);
  return NULL;
}

// dV = Pᵀ dO, dS = P ⊙ (dO Vᵀ − rowsum(P ⊙ dO Vᵀ)), dQ = scale·dS K, dK = scale·dSᵀ Q for sample b, head h; dS added to
// its bias row's gradient.
static void attention_grad_head(const struct heads *a, float **f, size_t b, size_t h, float *dS) {
  const size_t T = a->T, W = a->W, ld = 3 * W;
  const float *q = f[1] + b * T * ld + h * a->hd, *k = q + W, *v = q + 2 * W, *dO = f[0] + b * T * W + h * a->hd;
  const float *P = f[2] + (b * a->H + h) * T * T;
  float *dq = f[3] + b * T * ld + h * a->hd, *dk = dq + W, *dv = dq + 2 * W;
  sgemm_serial(false, true, T, T, a->hd, 1.0f, dO, W, v, ld, 0.0f, dS, T);
  sgemm_serial(true, false, T, a->hd, T, 1.0f, P, T, dO, W, 0.0f, dv, ld);
  for (size_t i = 0; i < T; i++) {
    float dot = 0;
    for (size_t j = 0; j < T; j++) dot += P[i * T + j] * dS[i * T + j];
    for (size_t j = 0; j < T; j++) dS[i * T + j] = P[i * T + j] * (dS[i * T + j] - dot);
  }
  if (a->n) {
    float *db = f[4] + ((b % a->n) * a->H + h) * T * T;
    for (size_t i = 0; i < T * T; i++) db[i] += dS[i];
  }
  sgemm_serial(false, false, T, a->hd, T, a->scale, dS, T, k, ld, 0.0f, dq, ld);
  sgemm_serial(true, false, T, a->hd, T, a->scale, dS, T, q, ld, 0.0f, dk, ld);
}

// attentionGrad(dout, qkv, probs, dqkv, dbias, B, T, H, scale, n): dqkv [B·T, 3W] in qkv's layout; dbias [n, H, T, T].
static napi_value attention_grad(napi_env env, napi_callback_info info) {
  napi_value argv[10];
  struct heads a;
  float *f[5];
  if (!heads_args(env, info, 5, argv, &a))
    return fail(env, "localmim_native: attentionGrad takes dout, qkv, probs, dqkv, dbias, B, T, H, scale, n");
  const size_t T = a.T, W = a.W, need[5] = {a.B * T * W, 3 * a.B * T * W, a.B * a.H * T * T, 3 * a.B * T * W, a.n * a.H * T * T};
  if (!arrays(env, argv, 5, need, f)) return fail(env, "localmim_native: attentionGrad arrays are too small");
  memset(f[4], 0, a.n * a.H * T * T * sizeof(float));
  for_heads(&a, f, attention_grad_head);
  return NULL;
}

// orientedMagnitudes(x, edges, bias, out, B, H, W, nbins): each pixel's Sobel magnitude in its unsigned orientation
// bin, out [nbins·B, H, W, 3] bin-major, from x [B, H, W, 3] reflect-padded by one. As core/targets/hog.ts does
// with tensors, step for step: the response folded into the upper half-plane, compared with each bin edge
// (edges [2, nbins − 1]: cos, then sin) by the sign of a cross product, and a bin's share the difference of
// "at least this edge" magnitudes, so that the float32 results are the same.
static napi_value oriented_magnitudes(napi_env env, napi_callback_info info) {
  napi_value argv[8];
  double d[4];
  float *f[4];
  if (!call_args(env, info, 8, argv, 4, d)) return fail(env, "localmim_native: orientedMagnitudes takes x, edges, bias, out, B, H, W, nbins");
  const size_t B = (size_t)d[0], H = (size_t)d[1], W = (size_t)d[2], nb = (size_t)d[3], plane = B * H * W * 3;
  const size_t need[4] = {plane, 2 * (nb - 1), 2, nb * plane};
  if (nb < 2 || nb > 64 || H < 2 || W < 2 || !arrays(env, argv, 4, need, f)) return fail(env, "localmim_native: orientedMagnitudes arrays are too small");
  const float *x = f[0], *cosE = f[1], *sinE = f[1] + nb - 1;
  float *out = f[3];
  for (size_t b = 0; b < B; b++)
    for (size_t r = 0; r < H; r++) {
      const size_t up = r ? r - 1 : 1, down = r + 1 < H ? r + 1 : H - 2;
      for (size_t c = 0; c < W; c++) {
        const size_t left = c ? c - 1 : 1, right = c + 1 < W ? c + 1 : W - 2;
        for (size_t ch = 0; ch < 3; ch++) {
#define AT(y, xx) x[((b * H + (y)) * W + (xx)) * 3 + ch]
          float c0 = (AT(up, left) - AT(up, right)) + 2 * (AT(r, left) - AT(r, right)) + (AT(down, left) - AT(down, right));
          float c1 = (AT(up, left) - AT(down, left)) + 2 * (AT(up, c) - AT(down, c)) + (AT(up, right) - AT(down, right));
#undef AT
          c0 += f[2][0];
          c1 += f[2][1];
          const float mag = sqrtf(c0 * c0 + c1 * c1);
          const float sign = (c0 < 0 || (c0 == 0 && c1 < 0)) ? -1.0f : 1.0f, y = c0 * sign, xx = c1 * sign;
          float prev = mag;
          float *o = out + ((b * H + r) * W + c) * 3 + ch;
          for (size_t k = 0; k + 1 < nb; k++) {
            const float past = y * cosE[k] - xx * sinE[k] >= 0 ? mag : 0.0f;
            o[k * plane] = prev - past;
            prev = past;
          }
          o[(nb - 1) * plane] = prev;
        }
      }
    }
  return NULL;
}

static napi_value threads(napi_env env, napi_callback_info info) {
  napi_value out;
  (void)info;
  napi_create_int32(env, (int32_t)pool_threads(), &out);
  return out;
}

// kernel(): the sgemm micro-kernel in use; kernels(): those this CPU runs, best first.
static napi_value kernel(napi_env env, napi_callback_info info) {
  napi_value out;
  (void)info;
  napi_create_string_utf8(env, sgemm_kernel(), NAPI_AUTO_LENGTH, &out);
  return out;
}

static napi_value kernels(napi_env env, napi_callback_info info) {
  napi_value out, name;
  (void)info;
  napi_create_array(env, &out);
  const char *const *names = sgemm_kernels();
  for (uint32_t i = 0; names[i]; i++) {
    napi_create_string_utf8(env, names[i], NAPI_AUTO_LENGTH, &name);
    napi_set_element(env, out, i, name);
  }
  return out;
}

// useKernel(name): switches sgemm's micro-kernel; throws if this CPU cannot run it.
static napi_value use_kernel(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  size_t argc = 1, len;
  char name[32];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 ||
      napi_get_value_string_utf8(env, argv[0], name, sizeof name, &len) != napi_ok)
    return fail(env, "localmim_native: useKernel takes a kernel name");
  if (!sgemm_use(name)) return fail(env, "localmim_native: this CPU cannot run that sgemm kernel");
  return NULL;
}

// openBlas(path): opens a system BLAS (native/blas.c) and returns whether it has cblas_sgemm; blasPath(): the one open.
static napi_value open_blas(napi_env env, napi_callback_info info) {
  napi_value argv[1], out;
  size_t argc = 1, len;
  char path[1024];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 ||
      napi_get_value_string_utf8(env, argv[0], path, sizeof path, &len) != napi_ok)
    return fail(env, "localmim_native: openBlas takes a library path");
  napi_get_boolean(env, blas_open(path), &out);
  return out;
}

static napi_value blas_opened(napi_env env, napi_callback_info info) {
  napi_value out;
  (void)info;
  const char *path = blas_path();
  if (path) napi_create_string_utf8(env, path, NAPI_AUTO_LENGTH, &out);
  else napi_get_null(env, &out);
  return out;
}

// routeGemm(transA, transB, system): one transpose mode's products on the system BLAS or on our sgemm.
static napi_value route_gemm(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  size_t argc = 3;
  bool ta, tb, system;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3 || napi_get_value_bool(env, argv[0], &ta) != napi_ok ||
      napi_get_value_bool(env, argv[1], &tb) != napi_ok || napi_get_value_bool(env, argv[2], &system) != napi_ok)
    return fail(env, "localmim_native: routeGemm takes (transA, transB, system)");
  if (system && !blas_path()) return fail(env, "localmim_native: no system BLAS is open");
  sgemm_route(ta, tb, system);
  return NULL;
}

NAPI_MODULE_INIT() {
  static const struct {
    const char *name;
    napi_callback fn;
  } exported[] = {
      {"gemm", gemm},
      {"transpose", transpose},
      {"threads", threads},
      {"kernel", kernel},
      {"kernels", kernels},
      {"useKernel", use_kernel},
      {"openBlas", open_blas},
      {"blasPath", blas_opened},
      {"routeGemm", route_gemm},
      {"layerNorm", layer_norm},
      {"layerNormGrad", layer_norm_grad},
      {"gelu", gelu},
      {"geluGrad", gelu_grad},
      {"columnSum", column_sum},
      {"adamw", adamw},
      {"linear", linear},
      {"attention", attention},
      {"attentionGrad", attention_grad},
      {"orientedMagnitudes", oriented_magnitudes},
  };
  for (size_t i = 0; i < sizeof exported / sizeof exported[0]; i++) {
    napi_value fn;
    napi_create_function(env, exported[i].name, NAPI_AUTO_LENGTH, exported[i].fn, NULL, &fn);
    napi_set_named_property(env, exports, exported[i].name, fn);
  }
  return exports;
}
