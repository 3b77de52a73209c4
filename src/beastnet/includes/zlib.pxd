# zlib, linked from the system (RFC 7692 permessage-deflate on the WebSocket
# feed: publications deflated once, client messages inflated).  Only what the
# engine calls.
cdef extern from "zlib.h" nogil:
    ctypedef struct z_stream:
        unsigned char* next_in              # not const unless ZLIB_CONST
        unsigned int avail_in
        unsigned char* next_out
        unsigned int avail_out
        int data_type                       # inflate: +128 when stopped at a block boundary
    enum:
        Z_OK
        Z_STREAM_END
        Z_NEED_DICT
        Z_BUF_ERROR
        Z_MEM_ERROR
        Z_DATA_ERROR
        Z_SYNC_FLUSH
        Z_DEFLATED
        Z_DEFAULT_COMPRESSION
        Z_DEFAULT_STRATEGY
    # Macros in zlib.h (they pass the header's version and struct size).
    int deflateInit2(z_stream* strm, int level, int method, int window_bits, int mem_level,
                     int strategy)
    int inflateInit2(z_stream* strm, int window_bits)
    int deflate(z_stream* strm, int flush)
    int deflateReset(z_stream* strm)
    int deflateEnd(z_stream* strm)
    unsigned long deflateBound(z_stream* strm, unsigned long source_len)
    int inflate(z_stream* strm, int flush)
    int inflateReset(z_stream* strm)
    int inflateEnd(z_stream* strm)
