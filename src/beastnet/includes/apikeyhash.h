/* apikeyhash.h: the SHA-256 of a presented API key, on the request path.
 *
 * OpenSSL 3's one-shot SHA256() goes through EVP_Q_digest, which fetches the
 * algorithm from the provider on every call: measured here at ~1.4 us per
 * short key, 12x a plaintext lookup.  The low-level SHA256_Init/Update/Final
 * run the same assembly block function on a stack context with no fetch and
 * no allocation.  OpenSSL 3.0 marks them deprecated (the EVP interface is
 * the supported one) but still ships them; the pragma keeps that one warning
 * out of the build without hiding deprecations elsewhere.
 */
#ifndef BN_APIKEYHASH_H
#define BN_APIKEYHASH_H

#include <stddef.h>
#include <openssl/sha.h>

#define BN_APIKEY_DIGEST_BYTES 32       /* SHA256_DIGEST_LENGTH */

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
static inline void bn_apikey_sha256(const char* key, size_t n, unsigned char* digest)
{
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, key, n);
    SHA256_Final(digest, &ctx);
}
#pragma GCC diagnostic pop

#endif
