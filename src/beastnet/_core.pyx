# cython: language_level=3, embedsignature=True
# beastnet._core: the native data plane.  One extension module; the pieces
# below are `include`d so calls between them stay direct C calls.

import collections as _collections
import os
import stat as _stat
import threading as _threading

import orjson as _orjson

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport (EADDRNOTAVAIL, EAGAIN, EBADF, EBUSY, ETIME, ECONNREFUSED, ECONNRESET, EFAULT,
                         EINPROGRESS, EINTR, EINVAL, EIO, EMFILE, EMSGSIZE, ENFILE, ENOBUFS,
                         ENOMEM, ENOPROTOOPT, ENOTSOCK, EOPNOTSUPP, EPIPE, ETIMEDOUT, errno)
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.math cimport sqrt
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memchr, memcmp, memcpy, memmove, memset, strlen
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, time_t, timespec
from posix.uio cimport iovec

from beastnet.includes cimport openssl
from beastnet.includes.zlib cimport *
from beastnet.includes.native cimport *
from beastnet.includes.system cimport *

from beastnet.errors import InvalidKeyError, TableFullError, TLSConfigError


include "consts.pxi"
include "_errors.pxi"
include "_qsbr.pxi"
include "_stats.pxi"
include "_ws.pxi"
include "_ws_deflate.pxi"
include "_table.pxi"
include "_missq.pxi"
include "_limits.pxi"
include "_rrl.pxi"
include "_replies.pxi"
include "_governor.pxi"
include "_engine.pxi"
include "_udp.pxi"
include "_http_parse.pxi"
include "_http_conn.pxi"
include "_tls.pxi"
include "_http_route.pxi"
include "_http_worker.pxi"
include "_http_uring.pxi"
include "_ws_msg.pxi"
include "_ws_ring.pxi"
include "_ws_topics.pxi"
include "_ws_conn.pxi"
include "_push.pxi"


def _module_init():
    qsbr_init()
    char_class_init()
    replies_init()
    http_parse_init()


_module_init()

PLATFORM_LINUX = bool(PLATFORM_IS_LINUX)
DEBUG_BUILD = bool(BEASTNET_DEBUG)
URING_BUILT = bool(BEASTNET_HAVE_LIBURING)


def uring_unavailable_reason(str disabled_path="/proc/sys/kernel/io_uring_disabled"):
    """None if this process can run io_uring with the features the HTTP
    backend needs, else one line saying why not (built without liburing,
    disabled by sysctl, kernel too old, refused by a seccomp filter...)."""
    cdef char why[256]
    cdef bytes path = disabled_path.encode()
    if bn_uring_probe(path, why, sizeof(why)) == 0:
        return None
    return why.decode("utf-8", "replace")


def attach_cpu_steering(int fd, unsigned int nsockets):
    """Attach the CPU-steering reuseport program to `fd`'s group; 0 or an errno."""
    return bn_attach_cpu_steering(fd, nsockets)


def parse_request(bytes datagram not None):
    """Parse one UDP request as a reader would: (status, tag_prefix, key, apikey).

    status is "ok", "bad" or "empty".  For tests and benchmarks of the parser.
    """
    cdef bn_request req
    cdef int status = udp_parse(datagram, len(datagram), &req)
    if status == PARSE_EMPTY:
        return ("empty", b"", None, None)
    tag = datagram[:req.tag_len]
    if status == PARSE_BAD:
        return ("bad", tag, None, None)
    return ("ok", tag, req.key[:req.key_len], req.apikey[:req.apikey_len] if req.apikey_len else None)


def lookup_many(ResponseTable table not None, list keys not None, Py_ssize_t rounds=1):
    """Probe `table` for each key `rounds` times without the GIL, as a reader
    does; returns the number of hits.  For the table-lookup microbenchmark."""
    cdef Py_ssize_t n = len(keys)
    cdef Py_ssize_t i, j
    cdef size_t hits = 0
    cdef list raws = [key_to_bytes(k) for k in keys]
    cdef const char** ptrs = <const char**>malloc(n * sizeof(char*) + 1)
    cdef size_t* lens = <size_t*>malloc(n * sizeof(size_t) + 1)
    cdef int slot = qsbr_register()
    if ptrs == NULL or lens == NULL:
        free(ptrs)
        free(lens)
        qsbr_unregister(slot)
        raise MemoryError()
    for i in range(n):
        ptrs[i] = <bytes>raws[i]
        lens[i] = len(<bytes>raws[i])
    with nogil:
        qsbr_online(&qsbr_slots[slot])
        for j in range(rounds):
            for i in range(n):
                if table_lookup(&table.index, ptrs[i], lens[i]) != NULL:
                    hits += 1
            qsbr_quiescent(&qsbr_slots[slot])
        qsbr_offline(&qsbr_slots[slot])
    qsbr_unregister(slot)
    free(ptrs)
    free(lens)
    return hits
