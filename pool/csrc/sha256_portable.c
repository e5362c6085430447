/* Portable C SHA-256 compression: the fallback on CPUs without SHA extensions, and the
 * reference the accelerated backends are tested against. */
#include <string.h>

#include "sha256.h"

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#define BSIG0(x) (ROTR(x, 2) ^ ROTR(x, 13) ^ ROTR(x, 22))
#define BSIG1(x) (ROTR(x, 6) ^ ROTR(x, 11) ^ ROTR(x, 25))
#define SSIG0(x) (ROTR(x, 7) ^ ROTR(x, 18) ^ ((x) >> 3))
#define SSIG1(x) (ROTR(x, 17) ^ ROTR(x, 19) ^ ((x) >> 10))
#define CH(x, y, z) (((x) & ((y) ^ (z))) ^ (z))
#define MAJ(x, y, z) (((x) & (y)) | ((z) & ((x) | (y))))

static inline uint32_t load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

#define ROUND(a, b, c, d, e, f, g, h, i)                                               \
    do {                                                                               \
        uint32_t t1_ = h + BSIG1(e) + CH(e, f, g) + kz_sha256_k[i] + w[i];             \
        d += t1_;                                                                      \
        h = t1_ + BSIG0(a) + MAJ(a, b, c);                                             \
    } while (0)

/* Eight rounds from i; a..h rotate by renaming instead of seven moves per round. */
#define ROUNDS8(i)                                                                     \
    do {                                                                               \
        ROUND(a, b, c, d, e, f, g, h, (i) + 0);                                        \
        ROUND(h, a, b, c, d, e, f, g, (i) + 1);                                        \
        ROUND(g, h, a, b, c, d, e, f, (i) + 2);                                        \
        ROUND(f, g, h, a, b, c, d, e, (i) + 3);                                        \
        ROUND(e, f, g, h, a, b, c, d, (i) + 4);                                        \
        ROUND(d, e, f, g, h, a, b, c, (i) + 5);                                        \
        ROUND(c, d, e, f, g, h, a, b, (i) + 6);                                        \
        ROUND(b, c, d, e, f, g, h, a, (i) + 7);                                        \
    } while (0)

/* One block; w[0..15] holds the message words and is extended in place to w[0..63]. */
static void compress_words(uint32_t state[8], uint32_t w[64])
{
    for (int i = 16; i < 64; i++)
        w[i] = SSIG1(w[i - 2]) + w[i - 7] + SSIG0(w[i - 15]) + w[i - 16];
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
    for (int i = 0; i < 64; i += 8)
        ROUNDS8(i);
    state[0] += a; state[1] += b; state[2] += c; state[3] += d;
    state[4] += e; state[5] += f; state[6] += g; state[7] += h;
}

static void compress_portable(uint32_t state[8], const uint8_t *blocks, size_t nblocks)
{
    uint32_t w[64];
    while (nblocks--) {
        for (int i = 0; i < 16; i++)
            w[i] = load_be32(blocks + 4 * i);
        compress_words(state, w);
        blocks += 64;
    }
}

static void compress_words_lanes_portable(size_t n, uint32_t *const states[], const uint32_t *const words[])
{
    uint32_t w[64];
    for (size_t j = 0; j < n; j++) {
        memcpy(w, words[j], 16 * sizeof w[0]);
        compress_words(states[j], w);
    }
}

static void compress_lanes_portable(size_t n, uint32_t *const states[], const uint8_t *const blocks[])
{
    for (size_t i = 0; i < n; i++)
        compress_portable(states[i], blocks[i], 1);
}

static void compress_pad64_lanes_portable(size_t n, uint32_t *const states[])
{
    for (size_t i = 0; i < n; i++)
        compress_portable(states[i], kz_pad64_block, 1);
}

const kz_backend kz_backend_portable = {
    .name = "portable",
    .compress = compress_portable,
    .compress_lanes = compress_lanes_portable,
    .compress_pad64_lanes = compress_pad64_lanes_portable,
    .compress_words_lanes = compress_words_lanes_portable,
};
