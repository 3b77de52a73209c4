# errno -> exception, in one place (as uvloop/errors.pyx).  Messages name the syscall.

cdef int raise_errno(str call) except -1:
    cdef int err = errno
    raise OSError(err, f"{call}: {os.strerror(err)}")
