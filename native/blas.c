// A Node-API addon giving tfjs's wasm backend OpenBLAS's sgemm: row-major C = op(A) · op(B) over a batch,
// reading and writing Float32Arrays in place (views of the wasm heap, so no copies), and single-pass kernels
// for the elementwise work around it (LayerNorm, erf-GELU, AdamW): one loop where tfjs runs several ops.
#ifdef __APPLE__
#include <Accelerate/Accelerate.h>
#else
#include <cblas.h>
#endif
#include <math.h>
#include <node_api.h>
#include <stdbool.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHECK(call)                                                       \
  if ((call) != napi_ok) {                                                \
    napi_throw_error(env, NULL, "localmim_blas: bad arguments to gemm"); \
    return NULL;                                                          \
  }

static float *floats(napi_env env, napi_value v, size_t *length) {
  napi_typedarray_type type;
  void *data;
  if (napi_get_typedarray_info(env, v, &type, length, &data, NULL, NULL) != napi_ok || type != napi_float32_array) return NULL;
  return (float *)data;
}

// gemm(transA, transB, batch, M, N, K, a, b, c, aBatched, bBatched)
static napi_value gemm(napi_env env, napi_callback_info info) {
  size_t argc = 11;
  napi_value argv[11];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 11) {
    napi_throw_error(env, NULL, "localmim_blas: gemm takes 11 arguments");
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
    napi_throw_error(env, NULL, "localmim_blas: gemm buffers are too small for the shapes");
    return NULL;
  }
  for (int32_t i = 0; i < batch; i++) {
    const float *A = a + (ab ? (size_t)i * M * K : 0);
    const float *B = b + (bb ? (size_t)i * K * N : 0);
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A, ta ? M : K, B, tb ? K : N, 0.0f,
                c + (size_t)i * M * N, N);
  }
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
    napi_throw_error(env, NULL, "localmim_blas: transpose takes x, shape (rank 1-6), perm, out");
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
    napi_throw_error(env, NULL, "localmim_blas: transpose buffers are too small");
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

// The elementwise kernels split their rows over the cores (at most 8) with plain pthreads: each part is a
// contiguous range, so results do not depend on timing, only on the machine's core count.
typedef void (*range_fn)(void *ctx, size_t part, size_t begin, size_t end);
struct chunk {
  range_fn body;
  void *ctx;
  size_t part, begin, end;
};

static void *run_chunk(void *p) {
  const struct chunk *c = p;
  c->body(c->ctx, c->part, c->begin, c->end);
  return NULL;
}

// How many parts n items make with at least `grain` in each.
static size_t parts(size_t n, size_t grain) {
  static size_t cores;
  if (!cores) {
    const long c = sysconf(_SC_NPROCESSORS_ONLN);
    cores = c < 1 ? 1 : c > 8 ? 8 : (size_t)c;
  }
  const size_t p = n / (grain ? grain : 1);
  return p < 1 ? 1 : p < cores ? p : cores;
}

static void parallel_for(size_t n, size_t grain, range_fn body, void *ctx) {
  const size_t P = parts(n, grain);
  struct chunk c[8];
  pthread_t tid[8];
  bool started[8] = {false};
  for (size_t t = 0; t < P; t++) c[t] = (struct chunk){body, ctx, t, n * t / P, n * (t + 1) / P};
  for (size_t t = 1; t < P; t++) started[t] = pthread_create(&tid[t], NULL, run_chunk, &c[t]) == 0;
  run_chunk(&c[0]);
  for (size_t t = 1; t < P; t++)
    if (started[t]) pthread_join(tid[t], NULL);
    else run_chunk(&c[t]);  // no thread to be had: run it here
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
  if (!call_args(env, info, 9, argv, 3, d)) return fail(env, "localmim_blas: layerNorm takes 6 arrays, rows, cols, eps");
  size_t R = (size_t)d[0], C = (size_t)d[1];
  const size_t need[6] = {R * C, C, C, R * C, R, R};
  if (!arrays(env, argv, 6, need, f)) return fail(env, "localmim_blas: layerNorm arrays are too small");
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
  if (!call_args(env, info, 10, argv, 2, d)) return fail(env, "localmim_blas: layerNormGrad takes 8 arrays, rows, cols");
  size_t R = (size_t)d[0], C = (size_t)d[1];
  const size_t need[8] = {R * C, R * C, C, R, R, R * C, C, C};
  if (!arrays(env, argv, 8, need, f)) return fail(env, "localmim_blas: layerNormGrad arrays are too small");
  const size_t grain = GRAIN / (C ? C : 1), P = parts(R, grain);
  float *partial = calloc(P * 2 * C, sizeof(float));
  if (!partial) return fail(env, "localmim_blas: out of memory");
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
  if (!call_args(env, info, 3, argv, 1, d)) return fail(env, "localmim_blas: gelu takes x, y, n");
  const size_t n = (size_t)d[0], need[2] = {n, n};
  if (!arrays(env, argv, 2, need, f)) return fail(env, "localmim_blas: gelu arrays are too small");
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
  if (!call_args(env, info, 4, argv, 1, d)) return fail(env, "localmim_blas: geluGrad takes dy, x, dx, n");
  const size_t n = (size_t)d[0], need[3] = {n, n, n};
  if (!arrays(env, argv, 3, need, f)) return fail(env, "localmim_blas: geluGrad arrays are too small");
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
  if (!call_args(env, info, 4, argv, 2, d)) return fail(env, "localmim_blas: columnSum takes x, out, rows, cols");
  const size_t R = (size_t)d[0], C = (size_t)d[1], need[2] = {R * C, C};
  if (!arrays(env, argv, 2, need, f)) return fail(env, "localmim_blas: columnSum arrays are too small");
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
  if (!call_args(env, info, 14, argv, 7, d)) return fail(env, "localmim_blas: adamw takes 7 arrays and 7 numbers");
  const size_t n = (size_t)d[0], need[7] = {n, n, n, n, n, n, n};
  if (!arrays(env, argv, 7, need, f)) return fail(env, "localmim_blas: adamw arrays are too small");
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
  if (!call_args(env, info, 7, argv, 3, d)) return fail(env, "localmim_blas: linear takes x, w, b, y, M, N, K");
  const size_t M = (size_t)d[0], N = (size_t)d[1], K = (size_t)d[2], need[4] = {M * K, N * K, N, M * N};
  if (!arrays(env, argv, 4, need, f)) return fail(env, "localmim_blas: linear arrays are too small");
  for (size_t r = 0; r < M; r++) memcpy(f[3] + r * N, f[2], N * sizeof(float));
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K, 1.0f, f[0], (int)K, f[1], (int)K, 1.0f, f[3], (int)N);
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

// attention(out, qkv, probs, bias, B, T, H, scale, n): per sample b and head h, P = softmax(scale·Q Kᵀ + bias), O = P V.
static napi_value attention(napi_env env, napi_callback_info info) {
  napi_value argv[9];
  struct heads a;
  float *f[4];
  if (!heads_args(env, info, 4, argv, &a)) return fail(env, "localmim_blas: attention takes out, qkv, probs, bias, B, T, H, scale, n");
  const size_t T = a.T, W = a.W, need[4] = {a.B * T * W, 3 * a.B * T * W, a.B * a.H * T * T, a.n * a.H * T * T};
  if (!arrays(env, argv, 4, need, f)) return fail(env, "localmim_blas: attention arrays are too small");
  for (size_t b = 0; b < a.B; b++)
    for (size_t h = 0; h < a.H; h++) {
      const float *q = f[1] + b * T * 3 * W + h * a.hd, *k = q + W, *v = q + 2 * W;
      float *p = f[2] + (b * a.H + h) * T * T;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)T, (int)a.hd, a.scale, q, (int)(3 * W), k, (int)(3 * W), 0.0f, p,
                  (int)T);
      if (a.n) {
        const float *bias = f[3] + ((b % a.n) * a.H + h) * T * T;
        for (size_t i = 0; i < T * T; i++) p[i] += bias[i];
      }
      softmax_rows(p, T, T);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)a.hd, (int)T, 1.0f, p, (int)T, v, (int)(3 * W), 0.0f,
                  f[0] + b * T * W + h * a.hd, (int)W);
    }
  return NULL;
}

// attentionGrad(dout, qkv, probs, dqkv, dbias, B, T, H, scale, n): dV = Pᵀ dO, dS = P ⊙ (dO Vᵀ − rowsum(P ⊙ dO Vᵀ)),
// dQ = scale·dS K, dK = scale·dSᵀ Q, written into dqkv [B·T, 3W] in qkv's layout; dbias [n, H, T, T] sums dS.
static napi_value attention_grad(napi_env env, napi_callback_info info) {
  napi_value argv[10];
  struct heads a;
  float *f[5];
  if (!heads_args(env, info, 5, argv, &a))
    return fail(env, "localmim_blas: attentionGrad takes dout, qkv, probs, dqkv, dbias, B, T, H, scale, n");
  const size_t T = a.T, W = a.W, need[5] = {a.B * T * W, 3 * a.B * T * W, a.B * a.H * T * T, 3 * a.B * T * W, a.n * a.H * T * T};
  if (!arrays(env, argv, 5, need, f)) return fail(env, "localmim_blas: attentionGrad arrays are too small");
  float *dS = malloc(T * T * sizeof(float));
  if (!dS) return fail(env, "localmim_blas: out of memory");
  memset(f[4], 0, a.n * a.H * T * T * sizeof(float));
  const int ld = (int)(3 * W);
  for (size_t b = 0; b < a.B; b++)
    for (size_t h = 0; h < a.H; h++) {
      const float *q = f[1] + b * T * 3 * W + h * a.hd, *k = q + W, *v = q + 2 * W, *dO = f[0] + b * T * W + h * a.hd;
      const float *P = f[2] + (b * a.H + h) * T * T;
      float *dq = f[3] + b * T * 3 * W + h * a.hd, *dk = dq + W, *dv = dq + 2 * W;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)T, (int)a.hd, 1.0f, dO, (int)W, v, ld, 0.0f, dS, (int)T);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)T, (int)a.hd, (int)T, 1.0f, P, (int)T, dO, (int)W, 0.0f, dv, ld);
      for (size_t i = 0; i < T; i++) {
        float dot = 0;
        for (size_t j = 0; j < T; j++) dot += P[i * T + j] * dS[i * T + j];
        for (size_t j = 0; j < T; j++) dS[i * T + j] = P[i * T + j] * (dS[i * T + j] - dot);
      }
      if (a.n) {
        float *db = f[4] + ((b % a.n) * a.H + h) * T * T;
        for (size_t i = 0; i < T * T; i++) db[i] += dS[i];
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)a.hd, (int)T, a.scale, dS, (int)T, k, ld, 0.0f, dq, ld);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)T, (int)a.hd, (int)T, a.scale, dS, (int)T, q, ld, 0.0f, dk, ld);
    }
  free(dS);
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
  if (!call_args(env, info, 8, argv, 4, d)) return fail(env, "localmim_blas: orientedMagnitudes takes x, edges, bias, out, B, H, W, nbins");
  const size_t B = (size_t)d[0], H = (size_t)d[1], W = (size_t)d[2], nb = (size_t)d[3], plane = B * H * W * 3;
  const size_t need[4] = {plane, 2 * (nb - 1), 2, nb * plane};
  if (nb < 2 || nb > 64 || H < 2 || W < 2 || !arrays(env, argv, 4, need, f)) return fail(env, "localmim_blas: orientedMagnitudes arrays are too small");
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
#ifdef __APPLE__
  napi_create_int32(env, 0, &out);
#else
  napi_create_int32(env, openblas_get_num_threads(), &out);
#endif
  return out;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "gemm", NAPI_AUTO_LENGTH, gemm, NULL, &fn);
  napi_set_named_property(env, exports, "gemm", fn);
  napi_create_function(env, "transpose", NAPI_AUTO_LENGTH, transpose, NULL, &fn);
  napi_set_named_property(env, exports, "transpose", fn);
  napi_create_function(env, "threads", NAPI_AUTO_LENGTH, threads, NULL, &fn);
  napi_set_named_property(env, exports, "threads", fn);
  napi_create_function(env, "layerNorm", NAPI_AUTO_LENGTH, layer_norm, NULL, &fn);
  napi_set_named_property(env, exports, "layerNorm", fn);
  napi_create_function(env, "layerNormGrad", NAPI_AUTO_LENGTH, layer_norm_grad, NULL, &fn);
  napi_set_named_property(env, exports, "layerNormGrad", fn);
  napi_create_function(env, "gelu", NAPI_AUTO_LENGTH, gelu, NULL, &fn);
  napi_set_named_property(env, exports, "gelu", fn);
  napi_create_function(env, "geluGrad", NAPI_AUTO_LENGTH, gelu_grad, NULL, &fn);
  napi_set_named_property(env, exports, "geluGrad", fn);
  napi_create_function(env, "columnSum", NAPI_AUTO_LENGTH, column_sum, NULL, &fn);
  napi_set_named_property(env, exports, "columnSum", fn);
  napi_create_function(env, "adamw", NAPI_AUTO_LENGTH, adamw, NULL, &fn);
  napi_set_named_property(env, exports, "adamw", fn);
  napi_create_function(env, "linear", NAPI_AUTO_LENGTH, linear, NULL, &fn);
  napi_set_named_property(env, exports, "linear", fn);
  napi_create_function(env, "attention", NAPI_AUTO_LENGTH, attention, NULL, &fn);
  napi_set_named_property(env, exports, "attention", fn);
  napi_create_function(env, "attentionGrad", NAPI_AUTO_LENGTH, attention_grad, NULL, &fn);
  napi_set_named_property(env, exports, "attentionGrad", fn);
  napi_create_function(env, "orientedMagnitudes", NAPI_AUTO_LENGTH, oriented_magnitudes, NULL, &fn);
  napi_set_named_property(env, exports, "orientedMagnitudes", fn);
  return exports;
}
