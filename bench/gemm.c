// bench-gemm ours|blas SECONDS SHAPE…: times native/sgemm.c, or the system's BLAS (built with -DWITH_CBLAS), on
// shapes "ta,tb,M,N,K", one JSON line each. One library per process: OpenBLAS's threads spin for a while after each
// call, and would take cores from ours if both ran in one. bench/gemm.ts builds and runs it.
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../native/pool.h"
#include "../native/sgemm.h"
#ifdef WITH_CBLAS
#ifdef __APPLE__
#include <Accelerate/Accelerate.h>
#else
#include <cblas.h>
#endif
#endif

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

struct shape {
  int ta, tb;
  size_t M, N, K;
};

typedef void (*impl)(const struct shape *s, const float *A, const float *B, float *C);

static void ours(const struct shape *s, const float *A, const float *B, float *C) {
  sgemm(s->ta, s->tb, s->M, s->N, s->K, 1.0f, A, s->ta ? s->M : s->K, B, s->tb ? s->K : s->N, 0.0f, C, s->N);
}

#ifndef WITH_CBLAS
#define theirs ours
#else
static void theirs(const struct shape *s, const float *A, const float *B, float *C) {
  cblas_sgemm(CblasRowMajor, s->ta ? CblasTrans : CblasNoTrans, s->tb ? CblasTrans : CblasNoTrans, (int)s->M, (int)s->N, (int)s->K, 1.0f, A,
              (int)(s->ta ? s->M : s->K), B, (int)(s->tb ? s->K : s->N), 0.0f, C, (int)s->N);
}
#endif

// GFLOP/s over repeated calls for about `seconds`, after a warm-up call; the best of three rounds.
static double rate(impl f, const struct shape *s, const float *A, const float *B, float *C, double seconds) {
  const double flops = 2.0 * s->M * s->N * s->K;
  double best = 0;
  f(s, A, B, C);
  for (int round = 0; round < 3; round++) {
    int calls = 0;
    const double t0 = now();
    double t;
    do f(s, A, B, C), calls++;
    while ((t = now() - t0) < seconds / 3);
    const double r = flops * calls / t / 1e9;
    best = r > best ? r : best;
  }
  return best;
}

int main(int argc, char **argv) {
  const bool blas = argc > 1 && !strcmp(argv[1], "blas");
#ifndef WITH_CBLAS
  if (blas) return fprintf(stderr, "built without a BLAS\n"), 2;
#endif
  const double seconds = argc > 2 ? atof(argv[2]) : 1.0;
  printf("{\"kernel\":\"%s\",\"threads\":%zu}\n", sgemm_kernel(), pool_threads());
  for (int i = 3; i < argc; i++) {
    struct shape s;
    if (sscanf(argv[i], "%d,%d,%zu,%zu,%zu", &s.ta, &s.tb, &s.M, &s.N, &s.K) != 5) return fprintf(stderr, "bad shape %s\n", argv[i]), 2;
    float *A = malloc(s.M * s.K * sizeof(float)), *B = malloc(s.K * s.N * sizeof(float)), *C = malloc(s.M * s.N * sizeof(float));
    for (size_t j = 0; j < s.M * s.K; j++) A[j] = (float)sin(0.37 * j);
    for (size_t j = 0; j < s.K * s.N; j++) B[j] = (float)cos(0.11 * j);
    printf("{\"shape\":\"%s\",\"gflops\":%.2f", argv[i], rate(blas ? theirs : ours, &s, A, B, C, seconds));
    if (blas) {  // and how far ours is from it
      float *D = malloc(s.M * s.N * sizeof(float));
      ours(&s, A, B, D);
      double err = 0, norm = 0;
      for (size_t j = 0; j < s.M * s.N; j++) err = fmax(err, fabs(C[j] - D[j])), norm = fmax(norm, fabs(C[j]));
      printf(",\"maxRelDiff\":%.2g", err / (norm ? norm : 1));
      free(D);
    }
    printf("}\n");
    fflush(stdout);
    free(A), free(B), free(C);
  }
  return 0;
}
