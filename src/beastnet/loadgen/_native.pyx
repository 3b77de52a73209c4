# cython: language_level=3, embedsignature=True
# beastnet.loadgen._native: the load generator's native threads, in an
# extension module of their own.  It shares no code with the engine it
# measures: only the system declarations (beastnet/includes/system.pxd,
# zlib.pxd, openssl.pxd) and the portability headers (atomics.h, compat.h,
# threads.h).  The pieces are
# `include`d so calls between them stay direct C calls.

import os

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport (EAGAIN, EBADF, ECONNREFUSED, ECONNRESET, EFAULT, EINPROGRESS, EINTR,
                         EINVAL, EIO, ENOBUFS, ENOPROTOOPT, ENOTSOCK, EOPNOTSUPP, EPIPE, EPROTO,
                         ETIMEDOUT, errno)
from libc.math cimport log
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memmove, memset
from posix.uio cimport iovec

from beastnet.includes.native cimport (BEASTNET_DEBUG, BN_CACHE_LINE, PLATFORM_IS_LINUX,
                                       bn_count, bn_load_int, bn_load_u64_relaxed,
                                       bn_pin_self_to_cpu, bn_store_int, bn_store_u64,
                                       bn_threads, bn_threads_free, bn_threads_init,
                                       bn_threads_join, bn_threads_start)
from beastnet.includes.system cimport *
from beastnet.loadgen.loadsys cimport *
from beastnet.includes.openssl cimport *
from beastnet.includes.zlib cimport *


include "_hist.pxi"
include "_run.pxi"
include "_tls.pxi"
include "_tcp.pxi"
include "_udp_load.pxi"
include "_http_load.pxi"
include "_ws_load.pxi"


PLATFORM_LINUX = bool(PLATFORM_IS_LINUX)
DEBUG_BUILD = bool(BEASTNET_DEBUG)
