// A fixed pool of worker threads, one per physical core, shared by every kernel of the addon: a job is split into
// parts, part 0 runs on the calling thread, the rest on the workers, and the call returns when all are done.
#pragma once
#include <stddef.h>

#if defined(_MSC_VER) && !defined(__clang__)
#define THREAD_LOCAL __declspec(thread)
#else
#define THREAD_LOCAL _Thread_local
#endif

typedef void (*pool_task)(void *ctx, size_t part, size_t parts);

/** How many threads a job may use: LOCALMIM_THREADS if set, else the physical cores this process may run on (at most 64). */
size_t pool_threads(void);

/** Runs task(ctx, p, parts) for every p < parts (parts ≤ pool_threads(); more are clamped) and waits for all of them.
 *  Called from inside a task it runs the parts one after another on that thread. */
void pool_run(size_t parts, pool_task task, void *ctx);

/** How many parts n items make with at least `grain` items each, at most pool_threads(). */
size_t pool_parts(size_t n, size_t grain);
