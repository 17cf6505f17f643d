#ifndef _GNU_SOURCE
#define _GNU_SOURCE  // sched_getaffinity
#endif
#include "pool.h"

#include <stdbool.h>
#include <stdlib.h>

#ifdef _WIN32
#include <windows.h>
typedef SRWLOCK mutex_t;
typedef CONDITION_VARIABLE cond_t;
#define mutex_init(m) InitializeSRWLock(m)
#define mutex_lock(m) AcquireSRWLockExclusive(m)
#define mutex_unlock(m) ReleaseSRWLockExclusive(m)
#define cond_init(c) InitializeConditionVariable(c)
#define cond_wait(c, m) SleepConditionVariableSRW(c, m, INFINITE, 0)
#define cond_broadcast(c) WakeAllConditionVariable(c)
#define cond_signal(c) WakeConditionVariable(c)
#else
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
#ifdef __APPLE__
#include <sys/sysctl.h>
#else
#include <sched.h>
#endif
typedef pthread_mutex_t mutex_t;
typedef pthread_cond_t cond_t;
#define mutex_init(m) pthread_mutex_init(m, NULL)
#define mutex_lock(m) pthread_mutex_lock(m)
#define mutex_unlock(m) pthread_mutex_unlock(m)
#define cond_init(c) pthread_cond_init(c, NULL)
#define cond_wait(c, m) pthread_cond_wait(c, m)
#define cond_broadcast(c) pthread_cond_broadcast(c)
#define cond_signal(c) pthread_cond_signal(c)
#endif

#define MAX_THREADS 64

// Physical cores, not hardware threads: two threads on one core share its FMA units, and GEMM saturates them.
static size_t physical_cores(void) {
#if defined(_WIN32)
  DWORD len = 0;
  GetLogicalProcessorInformationEx(RelationProcessorCore, NULL, &len);
  char *buf = malloc(len);
  size_t cores = 0;
  if (buf && GetLogicalProcessorInformationEx(RelationProcessorCore, (PSYSTEM_LOGICAL_PROCESSOR_INFORMATION_EX)buf, &len))
    for (DWORD at = 0; at < len; at += ((PSYSTEM_LOGICAL_PROCESSOR_INFORMATION_EX)(buf + at))->Size) cores++;
  free(buf);
  return cores;
#elif defined(__APPLE__)
  int n = 0;
  size_t len = sizeof n;
  return sysctlbyname("hw.physicalcpu", &n, &len, NULL, 0) == 0 && n > 0 ? (size_t)n : 0;
#else
  // The CPUs this process may run on (a container's cpuset), less the SMT siblings of the first of them.
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return (size_t)sysconf(_SC_NPROCESSORS_ONLN);
  size_t online = (size_t)CPU_COUNT(&set), smt = 1;
  for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
    if (!CPU_ISSET(cpu, &set)) continue;
    char path[96];
    snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/thread_siblings_list", cpu);
    FILE *f = fopen(path, "r");
    if (f) {
      int c, commas = 0, dash = 0, lo = 0, hi = 0;
      if (fscanf(f, "%d-%d", &lo, &hi) == 2) dash = hi - lo + 1;
      rewind(f);
      while ((c = fgetc(f)) != EOF) commas += c == ',';
      fclose(f);
      smt = dash > 1 ? (size_t)dash : (size_t)commas + 1;
    }
    break;
  }
  return online / (smt ? smt : 1);
#endif
}

static struct {
  mutex_t lock;
  cond_t wake, done;
  size_t threads;        // workers + the caller
  unsigned long job;     // incremented for each job
  size_t parts, pending; // this job's parts; workers still running one
  pool_task task;
  void *ctx;
  bool busy;
} pool;

static THREAD_LOCAL bool inside_task;

static void worker(size_t id) {
  unsigned long seen = 0;
  inside_task = true;
  mutex_lock(&pool.lock);
  for (;;) {
    while (pool.job == seen) cond_wait(&pool.wake, &pool.lock);
    seen = pool.job;
    if (id >= pool.parts) continue;
    const pool_task task = pool.task;
    void *ctx = pool.ctx;
    const size_t parts = pool.parts;
    mutex_unlock(&pool.lock);
    task(ctx, id, parts);
    mutex_lock(&pool.lock);
    if (--pool.pending == 0) cond_signal(&pool.done);
  }
}

#ifdef _WIN32
static DWORD WINAPI worker_main(LPVOID id) {
  worker((size_t)id);
  return 0;
}
static bool spawn(size_t id) {
  HANDLE h = CreateThread(NULL, 0, worker_main, (LPVOID)id, 0, NULL);
  if (h) CloseHandle(h);
  return h != NULL;
}
static INIT_ONCE once = INIT_ONCE_STATIC_INIT;
static BOOL CALLBACK start_once(PINIT_ONCE o, PVOID p, PVOID *c);
#define RUN_ONCE() InitOnceExecuteOnce(&once, start_once, NULL, NULL)
#else
static void *worker_main(void *id) {
  worker((size_t)id);
  return NULL;
}
static bool spawn(size_t id) {
  pthread_t t;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  const bool ok = pthread_create(&t, &attr, worker_main, (void *)id) == 0;
  pthread_attr_destroy(&attr);
  return ok;
}
static pthread_once_t once = PTHREAD_ONCE_INIT;
static void start(void);
#define RUN_ONCE() pthread_once(&once, start)
#endif

static void start(void) {
  mutex_init(&pool.lock);
  cond_init(&pool.wake);
  cond_init(&pool.done);
  const char *env = getenv("LOCALMIM_THREADS");
  size_t want = env && atoi(env) > 0 ? (size_t)atoi(env) : physical_cores();
  want = want < 1 ? 1 : want > MAX_THREADS ? MAX_THREADS : want;
  pool.threads = 1;
  // Workers that cannot be started are simply not counted.
  for (size_t id = 1; id < want && spawn(id); id++) pool.threads++;
}

#ifdef _WIN32
static BOOL CALLBACK start_once(PINIT_ONCE o, PVOID p, PVOID *c) {
  (void)o, (void)p, (void)c;
  start();
  return TRUE;
}
#endif

size_t pool_threads(void) {
  RUN_ONCE();
  return pool.threads;
}

size_t pool_parts(size_t n, size_t grain) {
  const size_t p = n / (grain ? grain : 1), t = pool_threads();
  return p < 1 ? 1 : p < t ? p : t;
}

void pool_run(size_t parts, pool_task task, void *ctx) {
  RUN_ONCE();
  if (parts > pool.threads) parts = pool.threads;
  // Nested jobs, and one while another thread (a second Node worker) holds the pool, run here in sequence.
  bool mine = false;
  if (parts > 1 && !inside_task) {
    mutex_lock(&pool.lock);
    mine = !pool.busy;
    if (mine) {
      pool.busy = true;
      pool.task = task;
      pool.ctx = ctx;
      pool.parts = parts;
      pool.pending = parts - 1;
      pool.job++;
      cond_broadcast(&pool.wake);
    }
    mutex_unlock(&pool.lock);
  }
  if (!mine) {
    for (size_t p = 0; p < parts; p++) task(ctx, p, parts);
    return;
  }
  inside_task = true;
  task(ctx, 0, parts);
  inside_task = false;
  mutex_lock(&pool.lock);
  while (pool.pending) cond_wait(&pool.done, &pool.lock);
  pool.busy = false;
  mutex_unlock(&pool.lock);
}
