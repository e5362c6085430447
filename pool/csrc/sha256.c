/* SHA-256 padding, incremental hashing and fixed-size shapes over the selected backend. */
#include <string.h>

#include "sha256.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

const uint32_t kz_sha256_iv[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

/* 16-byte alignment lets the SHA-NI backend load four constants with one aligned load. */
__attribute__((aligned(16))) const uint32_t kz_sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static const kz_backend *active = &kz_backend_portable;

#if defined(__x86_64__) || defined(__i386__)
/* 1 when the OS saves every register state bit in `mask` (XCR0), i.e. the registers are usable. */
static int os_saves(uint64_t mask)
{
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & bit_OSXSAVE))
        return 0;
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((((uint64_t)hi << 32) | lo) & mask) == mask;
}

static unsigned int leaf7_ebx(void)
{
    unsigned int eax, ebx, ecx, edx;
    if (__get_cpuid_max(0, 0) < 7)
        return 0;
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    return ebx;
}
#endif

int kz_cpu_has_shani(void)
{
#if defined(__x86_64__) || defined(__i386__)
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
        return 0;
    /* The SHA-NI backend also uses SSSE3 (pshufb) and SSE4.1 (blend). */
    if (!(ecx & bit_SSSE3) || !(ecx & bit_SSE4_1))
        return 0;
    return (leaf7_ebx() >> 29) & 1;
#else
    return 0;
#endif
}

int kz_cpu_has_avx2(void)
{
#if defined(__x86_64__) || defined(__i386__)
    return ((leaf7_ebx() >> 5) & 1) && os_saves(0x6);          /* XMM and YMM state */
#else
    return 0;
#endif
}

int kz_cpu_has_avx512(void)
{
#if defined(__x86_64__) || defined(__i386__)
    return ((leaf7_ebx() >> 16) & 1) && os_saves(0xE6);        /* + opmask and ZMM state */
#else
    return 0;
#endif
}

/* Every combination: a SIMD share pipeline for big batches (optional) over the compress functions
 * of a scalar backend, which also take the groups too small to fill the vector. Filled once by
 * kz_sha256_init; after that only the `active` pointer changes. */
enum { B_PORTABLE, B_SHANI, B_AVX2, B_AVX2_SHANI, B_AVX512, B_AVX512_SHANI, B_COUNT };
static kz_backend backends[B_COUNT];
static int usable[B_COUNT];
static const char *supported_names[B_COUNT + 1];

static void combine(int id, const char *name, const kz_backend *scalar, kz_group_fn group, size_t lanes,
                    size_t group_min, int ok)
{
    backends[id] = *scalar;
    backends[id].name = name;
    backends[id].group = group;
    backends[id].group_lanes = lanes;
    backends[id].group_min = group_min;
    usable[id] = ok;
}

static void build_backends(void)
{
    combine(B_PORTABLE, "portable", &kz_backend_portable, NULL, 0, 0, 1);
    combine(B_SHANI, "sha-ni", &kz_backend_portable, NULL, 0, 0, 0);
    combine(B_AVX2, "avx2", &kz_backend_portable, NULL, 0, 0, 0);
    combine(B_AVX2_SHANI, "avx2+sha-ni", &kz_backend_portable, NULL, 0, 0, 0);
    combine(B_AVX512, "avx512", &kz_backend_portable, NULL, 0, 0, 0);
    combine(B_AVX512_SHANI, "avx512+sha-ni", &kz_backend_portable, NULL, 0, 0, 0);
#ifdef KZ_HAVE_X86_CODE
    int shani = kz_cpu_has_shani(), avx2 = kz_cpu_has_avx2(), avx512 = kz_cpu_has_avx512();
    /* Smallest group worth a SIMD pass: over the portable code a vector with one live lane still
     * wins; over SHA-NI (about 15 ns a block, 8 interleaved) a 16-lane AVX-512 block (about 200 ns)
     * only wins when at least 12 or so lanes are live, and 8-lane AVX2 only when full. */
    combine(B_SHANI, "sha-ni", &kz_backend_shani, NULL, 0, 0, shani);
    combine(B_AVX2, "avx2", &kz_backend_portable, kz_group_avx2, KZ_AVX2_LANES, 1, avx2);
    combine(B_AVX2_SHANI, "avx2+sha-ni", &kz_backend_shani, kz_group_avx2, KZ_AVX2_LANES, KZ_AVX2_LANES,
            avx2 && shani);
    combine(B_AVX512, "avx512", &kz_backend_portable, kz_group_avx512, KZ_AVX512_LANES, 1, avx512);
    combine(B_AVX512_SHANI, "avx512+sha-ni", &kz_backend_shani, kz_group_avx512, KZ_AVX512_LANES, 12,
            avx512 && shani);
#endif
    size_t k = 0;
    for (int id = 0; id < B_COUNT; id++)
        if (usable[id])
            supported_names[k++] = backends[id].name;
    supported_names[k] = NULL;
}

const char *const *kz_supported_backends(void) { return supported_names; }

__attribute__((aligned(64))) uint32_t kz_pad64_wk[64];

/* The message schedule of kz_pad64_block, plus the round constants. */
static void compute_pad64_wk(void)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = ((uint32_t)kz_pad64_block[4 * i] << 24) | ((uint32_t)kz_pad64_block[4 * i + 1] << 16) |
               ((uint32_t)kz_pad64_block[4 * i + 2] << 8) | (uint32_t)kz_pad64_block[4 * i + 3];
#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROTR(w[i - 15], 7) ^ ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROTR(w[i - 2], 17) ^ ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = s1 + w[i - 7] + s0 + w[i - 16];
    }
#undef ROTR
    for (int i = 0; i < 64; i++)
        kz_pad64_wk[i] = w[i] + kz_sha256_k[i];
}

void kz_sha256_init(void)
{
    compute_pad64_wk();
    build_backends();
    kz_select_backend("auto");
}

const kz_backend *kz_active_backend(void) { return active; }

int kz_select_backend(const char *name)
{
    if (strcmp(name, "auto") == 0) {
        /* Fastest first, as measured on AMD Zen 5 (docs/benchmarks-hashing.md): AVX-512 groups with
         * SHA-NI for the rest, then SHA-NI, then AVX-512, then AVX2 groups, then portable C. */
        static const int preference[] = {B_AVX512_SHANI, B_SHANI, B_AVX512, B_AVX2, B_PORTABLE};
        for (size_t i = 0; i < sizeof preference / sizeof preference[0]; i++) {
            if (usable[preference[i]]) {
                active = &backends[preference[i]];
                return 0;
            }
        }
    }
    for (int id = 0; id < B_COUNT; id++) {
        if (strcmp(name, backends[id].name) == 0) {
            if (!usable[id])
                return -1;
            active = &backends[id];
            return 0;
        }
    }
    return -1;
}

static inline void store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

static inline void store_be64(uint8_t *p, uint64_t v)
{
    store_be32(p, (uint32_t)(v >> 32));
    store_be32(p + 4, (uint32_t)v);
}

void kz_state_to_bytes(const uint32_t state[8], uint8_t out[32])
{
    for (int i = 0; i < 8; i++)
        store_be32(out + 4 * i, state[i]);
}

void kz_sha256_start(kz_sha256_ctx *ctx)
{
    memcpy(ctx->state, kz_sha256_iv, sizeof ctx->state);
    ctx->total_len = 0;
    ctx->buf_len = 0;
}

void kz_sha256_update(kz_sha256_ctx *ctx, const kz_backend *be, const uint8_t *data, size_t len)
{
    if (len == 0)          /* data may be NULL for an empty part; memcpy(NULL, 0) is still UB */
        return;
    ctx->total_len += len;
    if (ctx->buf_len) {
        size_t take = 64 - ctx->buf_len;
        if (take > len)
            take = len;
        memcpy(ctx->buf + ctx->buf_len, data, take);
        ctx->buf_len += take;
        data += take;
        len -= take;
        if (ctx->buf_len < 64)
            return;
        be->compress(ctx->state, ctx->buf, 1);
        ctx->buf_len = 0;
    }
    if (len >= 64) {
        size_t whole = len / 64;
        be->compress(ctx->state, data, whole);
        data += whole * 64;
        len -= whole * 64;
    }
    if (len) {
        memcpy(ctx->buf, data, len);
        ctx->buf_len = len;
    }
}

void kz_sha256_finish(kz_sha256_ctx *ctx, const kz_backend *be, uint8_t out[32])
{
    uint64_t bit_len = ctx->total_len * 8;
    size_t n = ctx->buf_len;
    ctx->buf[n++] = 0x80;
    if (n > 56) {
        memset(ctx->buf + n, 0, 64 - n);
        be->compress(ctx->state, ctx->buf, 1);
        n = 0;
    }
    memset(ctx->buf + n, 0, 56 - n);
    store_be64(ctx->buf + 56, bit_len);
    be->compress(ctx->state, ctx->buf, 1);
    kz_state_to_bytes(ctx->state, out);
}

/* The second block of a 64-byte message: only padding and the length (512 bits). */
const uint8_t kz_pad64_block[64] = {
    0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x00,
};

static inline void block_for_32(uint8_t block[64], const uint8_t in[32])
{
    memcpy(block, in, 32);
    block[32] = 0x80;
    memset(block + 33, 0, 29);
    block[62] = 0x01;      /* 256 bits, big-endian */
    block[63] = 0x00;
}

static inline void tail_block_for_80(uint8_t block[64], const uint8_t in[80])
{
    memcpy(block, in + 64, 16);
    block[16] = 0x80;
    memset(block + 17, 0, 45);
    block[62] = 0x02;      /* 640 bits, big-endian */
    block[63] = 0x80;
}

void kz_sha256_32(const kz_backend *be, const uint8_t in[32], uint8_t out[32])
{
    uint32_t st[8];
    uint8_t block[64];
    memcpy(st, kz_sha256_iv, sizeof st);
    block_for_32(block, in);
    be->compress(st, block, 1);
    kz_state_to_bytes(st, out);
}

void kz_sha256_64(const kz_backend *be, const uint8_t in[64], uint8_t out[32])
{
    uint32_t st[8];
    memcpy(st, kz_sha256_iv, sizeof st);
    be->compress(st, in, 1);
    be->compress(st, kz_pad64_block, 1);
    kz_state_to_bytes(st, out);
}

void kz_sha256_80(const kz_backend *be, const uint8_t in[80], uint8_t out[32])
{
    uint32_t st[8];
    uint8_t block[64];
    memcpy(st, kz_sha256_iv, sizeof st);
    tail_block_for_80(block, in);
    be->compress(st, in, 1);
    be->compress(st, block, 1);
    kz_state_to_bytes(st, out);
}

/* Per-lane scratch for the multi-lane shapes: states, and pointers the backend takes. */
typedef struct {
    uint32_t st[KZ_MAX_LANES][8];
    uint8_t block[KZ_MAX_LANES][64];
    uint32_t *states[KZ_MAX_LANES];
    const uint8_t *blocks[KZ_MAX_LANES];
} lanes_t;

static void lanes_start(lanes_t *l, size_t n)
{
    /* All pointers, not just n: cheap, and no lane can ever reach an unset one. */
    for (size_t i = 0; i < KZ_MAX_LANES; i++) {
        l->states[i] = l->st[i];
        l->blocks[i] = l->block[i];
    }
    for (size_t i = 0; i < n; i++)
        memcpy(l->st[i], kz_sha256_iv, sizeof l->st[i]);
}

static void lanes_finish(const lanes_t *l, size_t n, uint8_t *const out[])
{
    for (size_t i = 0; i < n; i++)
        kz_state_to_bytes(l->st[i], out[i]);
}

void kz_sha256_32_lanes(const kz_backend *be, size_t n, const uint8_t *const in[], uint8_t *const out[])
{
    lanes_t l;
    lanes_start(&l, n);
    for (size_t i = 0; i < n; i++) {
        block_for_32(l.block[i], in[i]);
        l.blocks[i] = l.block[i];
    }
    be->compress_lanes(n, l.states, l.blocks);
    lanes_finish(&l, n, out);
}

void kz_sha256_64_lanes(const kz_backend *be, size_t n, const uint8_t *const in[], uint8_t *const out[])
{
    lanes_t l;
    lanes_start(&l, n);
    be->compress_lanes(n, l.states, in);
    be->compress_pad64_lanes(n, l.states);
    lanes_finish(&l, n, out);
}

void kz_sha256_80_lanes(const kz_backend *be, size_t n, const uint8_t *const in[], uint8_t *const out[])
{
    lanes_t l;
    lanes_start(&l, n);
    for (size_t i = 0; i < n; i++) {
        tail_block_for_80(l.block[i], in[i]);
        l.blocks[i] = l.block[i];
    }
    be->compress_lanes(n, l.states, in);
    be->compress_lanes(n, l.states, l.blocks);
    lanes_finish(&l, n, out);
}

void kz_dsha256(const kz_backend *be, const uint8_t *data, size_t len, uint8_t out[32])
{
    kz_sha256_ctx ctx;
    uint8_t first[32];
    kz_sha256_start(&ctx);
    kz_sha256_update(&ctx, be, data, len);
    kz_sha256_finish(&ctx, be, first);
    kz_sha256_32(be, first, out);
}
