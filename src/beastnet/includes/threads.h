/* threads.h: a group of native threads, started and joined together.
 *
 * Every native engine (UDP readers, HTTP workers) and every load loop runs
 * N pthreads over N state structs; this is the one place that starts and
 * joins them.  Plain C, so both extensions (the engine and the load
 * generator) include it without sharing any other code.
 */
#ifndef BN_THREADS_H
#define BN_THREADS_H

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>

typedef void* (*bn_thread_main_fn)(void*);

typedef struct bn_threads {
    pthread_t* tids;                    /* capacity entries, owned */
    int capacity;                       /* threads the group can hold */
    int running;                        /* started and not yet joined */
} bn_threads;

/* Room for `n` threads.  Returns 0 or ENOMEM. */
static int bn_threads_init(bn_threads* g, int n)
{
    g->running = 0;
    g->capacity = 0;
    g->tids = (pthread_t*)calloc(n > 0 ? (size_t)n : 1, sizeof(pthread_t));
    if (g->tids == NULL)
        return ENOMEM;
    g->capacity = n;
    return 0;
}

/* Start thread i as main(args[i]) for each of the `capacity` args.
 *
 * Every signal is blocked while the threads are created, and a new thread
 * inherits that mask: native threads never run a signal handler, so the
 * kernel delivers SIGINT/SIGTERM to Python's main thread, and a blocking
 * syscall in a worker is never cut short by EINTR from a process signal.
 * The caller's mask is restored afterwards (a signal that arrives meanwhile
 * stays pending and is delivered then).
 *
 * Returns 0, or pthread_create's error; `running` threads were started
 * either way, and the caller must stop and join them. */
static int bn_threads_start(bn_threads* g, bn_thread_main_fn main_fn, void* const* args)
{
    sigset_t all, saved;
    int rc = 0;
    int i;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &saved);
    for (i = g->running; i < g->capacity; i++) {
        rc = pthread_create(&g->tids[i], NULL, main_fn, args[i]);
        if (rc != 0)
            break;
        g->running = i + 1;
    }
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    return rc;
}

/* Join every started thread.  Call it without the GIL: a thread blocked on
 * the GIL while the joiner holds it would never finish. */
static void bn_threads_join(bn_threads* g)
{
    int i;
    for (i = 0; i < g->running; i++)
        pthread_join(g->tids[i], NULL);
    g->running = 0;
}

static void bn_threads_free(bn_threads* g)
{
    free(g->tids);
    g->tids = NULL;
    g->capacity = 0;
}

#endif /* BN_THREADS_H */
