/* Atomics and cache-line-aligned structs shared by the native threads.
 * Cython has no syntax for alignment or for the __atomic builtins, so the
 * structs whose layout matters live here and Cython declares them extern. */
#ifndef BEASTNET_ATOMICS_H
#define BEASTNET_ATOMICS_H

#include <stdint.h>

#define BN_CACHE_LINE 64

static inline uint64_t bn_load_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint64_t bn_load_u64_relaxed(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void bn_store_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void bn_store_u64_sc(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
static inline uint64_t bn_add_u64(uint64_t *p, uint64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST); }
static inline int bn_cas_u64(uint64_t *p, uint64_t expected, uint64_t desired)
{
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
}
static inline int bn_load_int(const int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void bn_store_int(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void bn_store_int_sc(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
static inline int bn_xchg_int(int *p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
static inline void *bn_load_ptr(void *const *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void bn_store_ptr(void **p, void *v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void *bn_xchg_ptr(void **p, void *v) { return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL); }
static inline void bn_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/* Reference counts: relaxed to take one (the taker already holds a valid
 * pointer), acq_rel to drop one, so the thread that frees sees every write
 * made through the other references.  Returns the count left. */
static inline void bn_ref_inc(uint32_t *p) { __atomic_add_fetch(p, 1, __ATOMIC_RELAXED); }
static inline uint32_t bn_ref_dec(uint32_t *p) { return __atomic_sub_fetch(p, 1, __ATOMIC_ACQ_REL); }

/* A counter written by exactly one thread and read by others: a relaxed
 * load + store is enough (no lock prefix), and readers never see a torn value. */
static inline void bn_count(uint64_t *p, uint64_t n)
{
    __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
}

/* QSBR: one slot per native reader thread.  epoch == 0 means offline (the
 * thread holds no table pointer); otherwise it is the global epoch the thread
 * saw at its last quiescent point.  One cache line each so announcing a
 * quiescent state never bounces another reader's line. */
typedef struct bn_qsbr_slot {
    uint64_t epoch;                         /* 0 = offline, else last seen global epoch */
    uint64_t in_use;                        /* 1 while a thread owns this slot */
    char pad[BN_CACHE_LINE - 2 * sizeof(uint64_t)];
} __attribute__((aligned(BN_CACHE_LINE))) bn_qsbr_slot;

/* Compare-and-swap of a pointer (the TCP engine's reply stack). */
static inline int bn_cas_ptr(void **p, void *expected, void *desired)
{
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
}

#endif /* BEASTNET_ATOMICS_H */

#ifndef BEASTNET_ATOMICS_RMW
#define BEASTNET_ATOMICS_RMW
/* A counter several threads add to: one locked add, no ordering needed. */
static inline void bn_add_relaxed(uint64_t *p, uint64_t n) { __atomic_fetch_add(p, n, __ATOMIC_RELAXED); }
/* A ticket: the value before the add (each caller gets its own). */
static inline uint64_t bn_fetch_add_relaxed(uint64_t *p, uint64_t n) { return __atomic_fetch_add(p, n, __ATOMIC_RELAXED); }
static inline int bn_cas_u64_relaxed(uint64_t *p, uint64_t expected, uint64_t desired)
{
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}
static inline int64_t bn_load_i64_relaxed(const int64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void bn_store_i64_relaxed(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline void bn_store_u64_relaxed(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
#endif
