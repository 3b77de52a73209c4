/* io_uring availability for the HTTP engine's second I/O backend.
 *
 * liburing is optional at build time: setup.py defines BEASTNET_HAVE_LIBURING=1
 * and links -luring only when pkg-config finds it, so a build without it still
 * works and reports why the backend is unavailable.  At run time the kernel may
 * lack io_uring, refuse it (sysctl kernel.io_uring_disabled, seccomp in
 * containers) or lack the features the backend relies on (multishot accept
 * and receive, provided buffer rings): the probe tries each for real. */
#ifndef BEASTNET_BN_URING_H
#define BEASTNET_BN_URING_H

#include <errno.h>
#include <stdio.h>
#include <string.h>

#ifndef BEASTNET_HAVE_LIBURING
#define BEASTNET_HAVE_LIBURING 0
#endif

#if BEASTNET_HAVE_LIBURING
#include <liburing.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#endif

/* A ring just big enough to prove the features work; buffer group 0. */
#define BN_URING_PROBE_ENTRIES 8
#define BN_URING_PROBE_BGID 0

/* The value of kernel.io_uring_disabled read from `path` (0 when the file is
 * missing: kernels before 6.6 have no such switch), or -1 if unreadable. */
static int bn_uring_read_disabled(const char* path)
{
    FILE* f = fopen(path, "r");
    int value = 0;
    if (f == NULL)
        return errno == ENOENT ? 0 : -1;
    if (fscanf(f, "%d", &value) != 1)
        value = -1;
    fclose(f);
    return value;
}

/* 0 if this process can run the io_uring backend; otherwise -1 with a
 * one-line reason (no trailing newline) in `why`.  `disabled_path` is the
 * kernel.io_uring_disabled sysctl file, a parameter so that tests can present
 * a disabled host without changing the machine's setting. */
static int bn_uring_probe(const char* disabled_path, char* why, size_t cap)
{
    int disabled = bn_uring_read_disabled(disabled_path);
    if (disabled == 2) {
        snprintf(why, cap, "disabled by sysctl kernel.io_uring_disabled=2");
        return -1;
    }
#if !BEASTNET_HAVE_LIBURING
    snprintf(why, cap, "built without liburing (install liburing-dev and rebuild)");
    return -1;
#else
    struct io_uring ring;
    struct io_uring_probe* probe;
    struct io_uring_buf_reg reg;
    void* bufs;
    size_t ring_bytes = BN_URING_PROBE_ENTRIES * sizeof(struct io_uring_buf);
    struct utsname host;
    int major = 0, minor = 0;
    int rc;
    /* Multishot receive (6.0) has no opcode of its own to probe for. */
    if (uname(&host) == 0 && sscanf(host.release, "%d.%d", &major, &minor) == 2
            && (major < 6)) {
        snprintf(why, cap, "kernel %s lacks multishot receive (needs >= 6.0)", host.release);
        return -1;
    }
    rc = io_uring_queue_init(BN_URING_PROBE_ENTRIES, &ring, 0);
    if (rc < 0) {
        if (disabled == 1 && (rc == -EPERM || rc == -EACCES))
            snprintf(why, cap, "io_uring_queue_init: %s (sysctl kernel.io_uring_disabled=1 "
                     "allows only root and the io_uring_group)", strerror(-rc));
        else
            snprintf(why, cap, "io_uring_queue_init: %s", strerror(-rc));
        return -1;
    }
    probe = io_uring_get_probe_ring(&ring);
    if (probe == NULL) {
        io_uring_queue_exit(&ring);
        snprintf(why, cap, "io_uring_get_probe_ring failed: kernel too old (needs >= 6.0)");
        return -1;
    }
    rc = io_uring_opcode_supported(probe, IORING_OP_ACCEPT)
         && io_uring_opcode_supported(probe, IORING_OP_RECV)
         && io_uring_opcode_supported(probe, IORING_OP_SENDMSG);
    io_uring_free_probe(probe);
    if (!rc) {
        io_uring_queue_exit(&ring);
        snprintf(why, cap, "the kernel's io_uring lacks accept/recv/sendmsg");
        return -1;
    }
    /* Provided buffer rings (5.19) are what multishot receive draws from. */
    bufs = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (bufs == MAP_FAILED) {
        rc = errno;
        io_uring_queue_exit(&ring);
        snprintf(why, cap, "mmap of a provided buffer ring: %s", strerror(rc));
        return -1;
    }
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (unsigned long)bufs;
    reg.ring_entries = BN_URING_PROBE_ENTRIES;
    reg.bgid = BN_URING_PROBE_BGID;
    rc = io_uring_register_buf_ring(&ring, &reg, 0);
    if (rc == 0)
        io_uring_unregister_buf_ring(&ring, BN_URING_PROBE_BGID);
    munmap(bufs, ring_bytes);
    io_uring_queue_exit(&ring);
    if (rc < 0) {
        snprintf(why, cap, "io_uring_register_buf_ring: %s (provided buffer rings need "
                 "kernel >= 5.19)", strerror(-rc));
        return -1;
    }
    return 0;
#endif
}

#endif
