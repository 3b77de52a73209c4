/* Platform pieces that Cython cannot express directly: CPU pinning and the
 * classic-BPF reuseport program.  Linux is the only platform with the batch
 * syscalls beastnet relies on (recvmmsg/sendmmsg), so elsewhere the steering
 * helpers report ENOPROTOOPT and the server falls back to plain SO_REUSEPORT. */
#ifndef BEASTNET_COMPAT_H
#define BEASTNET_COMPAT_H

#include <errno.h>
#include <stdint.h>
#include <sys/socket.h>

#ifdef __linux__
#define PLATFORM_IS_LINUX 1
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <linux/filter.h>
#else
#define PLATFORM_IS_LINUX 0
#endif

#ifndef BEASTNET_DEBUG
#define BEASTNET_DEBUG 0
#endif

/* Pin the calling thread to one CPU.  Returns 0 or an errno value. */
static int bn_pin_self_to_cpu(int cpu)
{
#if PLATFORM_IS_LINUX
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
#else
    (void)cpu;
    return ENOSYS;
#endif
}

/* Attach "socket index = receiving CPU % nsockets" to the reuseport group
 * that `fd` belongs to.  The kernel indexes a group's sockets in bind order,
 * so socket i of the group is the one bound i-th.  An index the program
 * returns that is out of range makes the kernel fall back to its hash.
 * Returns 0 or an errno value. */
static int bn_attach_cpu_steering(int fd, uint32_t nsockets)
{
#if PLATFORM_IS_LINUX && defined(SO_ATTACH_REUSEPORT_CBPF)
    struct sock_filter code[] = {
        /* A = raw_smp_processor_id() */
        { BPF_LD | BPF_W | BPF_ABS, 0, 0, (uint32_t)(SKF_AD_OFF + SKF_AD_CPU) },
        /* A = A % nsockets */
        { BPF_ALU | BPF_MOD | BPF_K, 0, 0, nsockets },
        /* return A: the index of the socket in the group */
        { BPF_RET | BPF_A, 0, 0, 0 },
    };
    struct sock_fprog prog = { (unsigned short)(sizeof(code) / sizeof(code[0])), code };
    if (nsockets == 0)
        return EINVAL;
    if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof(prog)) < 0)
        return errno;
    return 0;
#else
    (void)fd;
    (void)nsockets;
    return ENOPROTOOPT;
#endif
}

#endif /* BEASTNET_COMPAT_H */
