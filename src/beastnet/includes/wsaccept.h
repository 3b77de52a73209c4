/* wsaccept.h: the WebSocket opening handshake's one piece of cryptography.
 *
 * RFC 6455 section 4.2.2: Sec-WebSocket-Accept is
 *     base64(SHA-1(Sec-WebSocket-Key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")).
 * SHA-1 here is not used for security (the RFC only wants proof that the
 * server understood the upgrade), so a small portable implementation (FIPS
 * 180-4, section 6.1) keeps the upgrade in the native worker without linking
 * a crypto library.  Tests check it against hashlib.
 */
#ifndef BN_WSACCEPT_H
#define BN_WSACCEPT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define BN_WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define BN_WS_GUID_BYTES 36
#define BN_WS_ACCEPT_BYTES 28           /* base64 of a 20-byte digest */

typedef struct bn_sha1 {
    uint32_t h[5];
    uint64_t total_bytes;
    uint8_t block[64];
    size_t block_len;
} bn_sha1;

static inline uint32_t bn_rol32(uint32_t v, int n) { return (v << n) | (v >> (32 - n)); }

static void bn_sha1_block(bn_sha1* s, const uint8_t* p)
{
    uint32_t w[80];
    uint32_t a, b, c, d, e, f, k, t;
    int i;
    for (i = 0; i < 16; i++)
        w[i] = ((uint32_t)p[4 * i] << 24) | ((uint32_t)p[4 * i + 1] << 16) |
               ((uint32_t)p[4 * i + 2] << 8) | (uint32_t)p[4 * i + 3];
    for (i = 16; i < 80; i++)
        w[i] = bn_rol32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    a = s->h[0]; b = s->h[1]; c = s->h[2]; d = s->h[3]; e = s->h[4];
    for (i = 0; i < 80; i++) {
        if (i < 20)      { f = (b & c) | (~b & d);          k = 0x5A827999u; }
        else if (i < 40) { f = b ^ c ^ d;                   k = 0x6ED9EBA1u; }
        else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDCu; }
        else             { f = b ^ c ^ d;                   k = 0xCA62C1D6u; }
        t = bn_rol32(a, 5) + f + e + k + w[i];
        e = d; d = c; c = bn_rol32(b, 30); b = a; a = t;
    }
    s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d; s->h[4] += e;
}

static void bn_sha1_init(bn_sha1* s)
{
    s->h[0] = 0x67452301u; s->h[1] = 0xEFCDAB89u; s->h[2] = 0x98BADCFEu;
    s->h[3] = 0x10325476u; s->h[4] = 0xC3D2E1F0u;
    s->total_bytes = 0;
    s->block_len = 0;
}

static void bn_sha1_update(bn_sha1* s, const uint8_t* p, size_t n)
{
    s->total_bytes += n;
    while (n > 0) {
        size_t take = 64 - s->block_len;
        if (take > n)
            take = n;
        memcpy(s->block + s->block_len, p, take);
        s->block_len += take;
        p += take;
        n -= take;
        if (s->block_len == 64) {
            bn_sha1_block(s, s->block);
            s->block_len = 0;
        }
    }
}

static void bn_sha1_final(bn_sha1* s, uint8_t out[20])
{
    uint64_t bits = s->total_bytes * 8;
    uint8_t pad = 0x80;
    uint8_t zero = 0;
    uint8_t len_be[8];
    int i;
    bn_sha1_update(s, &pad, 1);
    while (s->block_len != 56)
        bn_sha1_update(s, &zero, 1);
    for (i = 0; i < 8; i++)
        len_be[i] = (uint8_t)(bits >> (56 - 8 * i));
    bn_sha1_update(s, len_be, 8);
    for (i = 0; i < 20; i++)
        out[i] = (uint8_t)(s->h[i / 4] >> (24 - 8 * (i % 4)));
}

/* Base64 (RFC 4648, with padding) of `n` bytes into `out`; returns the length. */
static size_t bn_base64(const uint8_t* in, size_t n, char* out)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i, o = 0;
    for (i = 0; i + 2 < n; i += 3) {
        uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8) | in[i + 2];
        out[o++] = alphabet[(v >> 18) & 63];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = alphabet[(v >> 6) & 63];
        out[o++] = alphabet[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        out[o++] = alphabet[(v >> 18) & 63];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = i + 1 < n ? alphabet[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    return o;
}

/* Sec-WebSocket-Accept for a Sec-WebSocket-Key: BN_WS_ACCEPT_BYTES into `out`. */
static void bn_ws_accept(const char* key, size_t key_len, char* out)
{
    bn_sha1 s;
    uint8_t digest[20];
    bn_sha1_init(&s);
    bn_sha1_update(&s, (const uint8_t*)key, key_len);
    bn_sha1_update(&s, (const uint8_t*)BN_WS_GUID, BN_WS_GUID_BYTES);
    bn_sha1_final(&s, digest);
    bn_base64(digest, 20, out);
}

#endif /* BN_WSACCEPT_H */
