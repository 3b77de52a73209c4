# Protocol and engine limits, shared by every piece of the core.

cdef enum:
    KEY_MAX_BYTES = 64              # longest KEY (DESIGN.md §2)
    TAG_MAX_BYTES = 16              # longest TAG, without the '@'
    APIKEY_MAX_BYTES = 64           # longest APIKEY
    TAG_PREFIX_MAX_BYTES = 18       # '@' + TAG + ' '
    CONTENT_TYPE_MAX_BYTES = 127    # longest Content-Type an entry may carry
    BODY_MAX_BYTES = 16777216       # 16 MiB: the largest body an entry may hold
    UDP_PAYLOAD_MAX_BYTES = 65507   # IPv4 UDP payload limit; bigger replies fail with EMSGSIZE
    ADDR_MAX_BYTES = 32             # room for a sockaddr_in6 (28 bytes)
    CMSG_BUF_BYTES = 64             # control buffer for SO_RXQ_OVFL (CMSG_SPACE(4) = 20)
    QSBR_MAX_THREADS = 512          # native reader threads alive at once, process-wide
    ERROR_SCRATCH_BYTES = 64        # per-datagram room for an error body formatted per request
    SEND_TIMEOUT_MS = 50            # SO_SNDTIMEO: bounds how long stop() can wait on a full send buffer

# Character classes of the request grammar, indexed by byte value.
cdef enum:
    CHAR_KEY = 1                    # [A-Za-z0-9._:/-]
    CHAR_PRINT = 2                  # printable, not space: 0x21..0x7e

# Outcome of parsing one UDP request.
cdef enum:
    PARSE_OK = 0                    # KEY (and maybe TAG, APIKEY) found
    PARSE_BAD = 1                   # malformed: answer bad_request
    PARSE_EMPTY = 2                 # zero bytes after stripping the line ending

# Verdict of an API-key check.
cdef enum:
    ADMIT_OK = 0                    # serve it
    ADMIT_UNAUTHORIZED = 1          # missing, unknown or revoked key
    ADMIT_RATE_LIMITED = 2          # GCRA says too soon
    ADMIT_OVER_QUOTA = 3            # monthly cap reached
