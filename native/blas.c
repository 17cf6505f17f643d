#define _GNU_SOURCE  // dladdr
#include "blas.h"

#include <stdio.h>
#include <string.h>

#include "pool.h"

#ifdef _WIN32
#include <windows.h>
static void *open_library(const char *path) { return (void *)LoadLibraryA(path); }
static void *symbol(void *lib, const char *name) { return (void *)GetProcAddress((HMODULE)lib, name); }
static void file_of(void *lib, const char *fallback, char *out, size_t n) {
  if (!GetModuleFileNameA((HMODULE)lib, out, (DWORD)n)) snprintf(out, n, "%s", fallback);
}
#else
#include <dlfcn.h>
#include <stdlib.h>
// OpenBLAS's threads spin after each call (2^28 cycles by default), taking cores from the pool's kernels that follow:
// unless the user set it, they sleep at once. The library reads it as it loads; the process's environment is left as
// it was, for its children.
static void *open_library(const char *path) {
  const bool set = !getenv("OPENBLAS_THREAD_TIMEOUT");
  if (set) setenv("OPENBLAS_THREAD_TIMEOUT", "4", 0);
  void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (set) unsetenv("OPENBLAS_THREAD_TIMEOUT");
  return lib;
}
static void *symbol(void *lib, const char *name) { return dlsym(lib, name); }
// The file the loader found for a bare name such as libopenblas.so.0 (so a cache can tell when it changes).
static void file_of(void *lib, const char *fallback, char *out, size_t n) {
  Dl_info info;
  void *f = dlsym(lib, "cblas_sgemm");
  snprintf(out, n, "%s", f && dladdr(f, &info) && info.dli_fname ? info.dli_fname : fallback);
}
#endif

// CBLAS's enums (cblas.h), by value, since no header is there to include.
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };
typedef void (*cblas_sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int, float, float *, int);
typedef void (*set_threads_fn)(int);

static cblas_sgemm_fn system_sgemm;
static char opened[1024];

bool blas_open(const char *path) {
  void *lib = open_library(path);
  cblas_sgemm_fn f = lib ? (cblas_sgemm_fn)symbol(lib, "cblas_sgemm") : NULL;
  if (!f) return false;
  // OpenBLAS and MKL start a thread per logical CPU; the pool's count (physical cores, or LOCALMIM_THREADS) is ours.
  static const char *const setters[] = {"openblas_set_num_threads", "MKL_Set_Num_Threads"};
  for (size_t i = 0; i < sizeof setters / sizeof setters[0]; i++) {
    set_threads_fn set = (set_threads_fn)symbol(lib, setters[i]);
    if (set) set((int)pool_threads());
  }
  system_sgemm = f;
  file_of(lib, path, opened, sizeof opened);
  return true;
}

const char *blas_path(void) { return system_sgemm ? opened : NULL; }

void blas_sgemm(bool ta, bool tb, size_t M, size_t N, size_t K, float alpha, const float *A, size_t lda, const float *B, size_t ldb,
                float beta, float *C, size_t ldc) {
  system_sgemm(ROW_MAJOR, ta ? TRANS : NO_TRANS, tb ? TRANS : NO_TRANS, (int)M, (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C,
               (int)ldc);
}
