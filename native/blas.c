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
#include <stdint.h>

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
    if (!f[i] || len < need[i]) return false;
  }
  return true;
}

static napi_value fail(napi_env env, const char *what) {
  napi_throw_error(env, NULL, what);
  return NULL;
}

// layerNorm(x, w, b, y, mean, rstd, rows, cols, eps), x [rows, cols]: per row, y = (x − mean)·rstd·w + b with
// rstd = 1/√(biased variance + eps); mean and rstd [rows] are what the backward pass needs.
static napi_value layer_norm(napi_env env, napi_callback_info info) {
  napi_value argv[9];
  double d[3];
  float *f[6];
  if (!call_args(env, info, 9, argv, 3, d)) return fail(env, "localmim_blas: layerNorm takes 6 arrays, rows, cols, eps");
  size_t R = (size_t)d[0], C = (size_t)d[1];
  const size_t need[6] = {R * C, C, C, R * C, R, R};
  if (!arrays(env, argv, 6, need, f)) return fail(env, "localmim_blas: layerNorm arrays are too small");
  const float *x = f[0], *w = f[1], *b = f[2];
  for (size_t r = 0; r < R; r++) {
    const float *xr = x + r * C;
    float *yr = f[3] + r * C;
    double s = 0, ss = 0;
    for (size_t c = 0; c < C; c++) s += xr[c];
    const float mean = (float)(s / C);
    for (size_t c = 0; c < C; c++) ss += (double)(xr[c] - mean) * (xr[c] - mean);
    const float rstd = 1.0f / sqrtf((float)(ss / C) + (float)d[2]);
    for (size_t c = 0; c < C; c++) yr[c] = (xr[c] - mean) * rstd * w[c] + b[c];
    f[4][r] = mean;
    f[5][r] = rstd;
  }
  return NULL;
}

// layerNormGrad(dy, x, w, mean, rstd, dx, dw, db, rows, cols): with x̂ = (x − mean)·rstd and g = dy·w per row,
// dx = rstd·(g − mean(g) − x̂·mean(g·x̂)); dw = Σ_rows dy·x̂, db = Σ_rows dy.
static napi_value layer_norm_grad(napi_env env, napi_callback_info info) {
  napi_value argv[10];
  double d[2];
  float *f[8];
  if (!call_args(env, info, 10, argv, 2, d)) return fail(env, "localmim_blas: layerNormGrad takes 8 arrays, rows, cols");
  size_t R = (size_t)d[0], C = (size_t)d[1];
  const size_t need[8] = {R * C, R * C, C, R, R, R * C, C, C};
  if (!arrays(env, argv, 8, need, f)) return fail(env, "localmim_blas: layerNormGrad arrays are too small");
  const float *dy = f[0], *x = f[1], *w = f[2], *mean = f[3], *rstd = f[4];
  float *dx = f[5], *dw = f[6], *db = f[7];
  for (size_t c = 0; c < C; c++) dw[c] = db[c] = 0;
  for (size_t r = 0; r < R; r++) {
    const float *dyr = dy + r * C, *xr = x + r * C;
    float *dxr = dx + r * C;
    double sg = 0, sgx = 0;
    for (size_t c = 0; c < C; c++) {
      const float xh = (xr[c] - mean[r]) * rstd[r], g = dyr[c] * w[c];
      sg += g;
      sgx += (double)g * xh;
      dw[c] += dyr[c] * xh;
      db[c] += dyr[c];
    }
    const float mg = (float)(sg / C), mgx = (float)(sgx / C);
    for (size_t c = 0; c < C; c++) dxr[c] = rstd[r] * (dyr[c] * w[c] - mg - (xr[c] - mean[r]) * rstd[r] * mgx);
  }
  return NULL;
}

// gelu(x, y, n): y = x·Φ(x), Φ the standard normal CDF (PyTorch's exact GELU).
static napi_value gelu(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  double d[1];
  float *f[2];
  if (!call_args(env, info, 3, argv, 1, d)) return fail(env, "localmim_blas: gelu takes x, y, n");
  const size_t n = (size_t)d[0], need[2] = {n, n};
  if (!arrays(env, argv, 2, need, f)) return fail(env, "localmim_blas: gelu arrays are too small");
  for (size_t i = 0; i < n; i++) f[1][i] = 0.5f * f[0][i] * (1.0f + erff(f[0][i] * (float)M_SQRT1_2));
  return NULL;
}

// geluGrad(dy, x, dx, n): dx = dy·(Φ(x) + x·φ(x)), φ the standard normal density.
static napi_value gelu_grad(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  double d[1];
  float *f[3];
  if (!call_args(env, info, 4, argv, 1, d)) return fail(env, "localmim_blas: geluGrad takes dy, x, dx, n");
  const size_t n = (size_t)d[0], need[3] = {n, n, n};
  if (!arrays(env, argv, 3, need, f)) return fail(env, "localmim_blas: geluGrad arrays are too small");
  const float k = (float)(0.5 * M_2_SQRTPI * M_SQRT1_2);  // 1/√(2π)
  for (size_t i = 0; i < n; i++) {
    const float x = f[1][i];
    f[2][i] = f[0][i] * (0.5f * (1.0f + erff(x * (float)M_SQRT1_2)) + x * k * expf(-0.5f * x * x));
  }
  return NULL;
}

// adamw(p, g, m, v, pOut, mOut, vOut, n, beta1, beta2, eps, decay, sqrtBc2, stepSize): PyTorch's AdamW on one
// tensor: m' = β1·m + (1−β1)·g, v' = β2·v + (1−β2)·g², p' = decay·p − stepSize·m' / (√v'/√bc2 + eps).
static napi_value adamw(napi_env env, napi_callback_info info) {
  napi_value argv[14];
  double d[7];
  float *f[7];
  if (!call_args(env, info, 14, argv, 7, d)) return fail(env, "localmim_blas: adamw takes 7 arrays and 7 numbers");
  const size_t n = (size_t)d[0], need[7] = {n, n, n, n, n, n, n};
  if (!arrays(env, argv, 7, need, f)) return fail(env, "localmim_blas: adamw arrays are too small");
  const float b1 = (float)d[1], b2 = (float)d[2], eps = (float)d[3], decay = (float)d[4], sbc2 = (float)d[5], lr = (float)d[6];
  const float c1 = 1.0f - b1, c2 = 1.0f - b2;
  for (size_t i = 0; i < n; i++) {
    const float g = f[1][i], m = f[2][i] * b1 + g * c1, v = f[3][i] * b2 + g * g * c2;
    f[4][i] = f[0][i] * decay - m / (sqrtf(v) / sbc2 + eps) * lr;
    f[5][i] = m;
    f[6][i] = v;
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
  napi_create_function(env, "adamw", NAPI_AUTO_LENGTH, adamw, NULL, &fn);
  napi_set_named_property(env, exports, "adamw", fn);
  return exports;
}
