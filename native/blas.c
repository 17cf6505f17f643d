// A Node-API addon giving tfjs's wasm backend OpenBLAS's sgemm: row-major C = op(A) · op(B) over a batch,
// reading and writing Float32Arrays in place (views of the wasm heap, so no copies).
#ifdef __APPLE__
#include <Accelerate/Accelerate.h>
#else
#include <cblas.h>
#endif
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
  return exports;
}
