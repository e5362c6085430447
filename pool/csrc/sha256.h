/* SHA-256 for kzpool: one compression-function interface with run-time selected backends.
 *
 * Everything above the compression function (padding, incremental hashing, the fixed-size
 * shapes a share needs: 32-, 64- and 80-byte messages) is written once here and shared by every
 * backend, so a backend only has to get the 64 rounds right.
 */
#ifndef KZ_SHA256_H
#define KZ_SHA256_H

#include <stddef.h>
#include <stdint.h>

/* Compress `nblocks` consecutive 64-byte blocks into `state`. */
typedef void (*kz_compress_fn)(uint32_t state[8], const uint8_t *blocks, size_t nblocks);

/* Most independent messages a multi-buffer call takes (the width of a 512-bit register). */
#define KZ_MAX_LANES 16

/* Compress one block into each of `n` (1..KZ_MAX_LANES) independent states. A backend whose
 * instructions are latency-bound (SHA-NI) interleaves several messages for throughput; a SIMD
 * backend would put one message per vector lane; the portable one just loops. */
typedef void (*kz_compress_lanes_fn)(size_t n, uint32_t *const states[], const uint8_t *const blocks[]);

/* The same with each block given as its 16 message words W[0..15] (host order): the share pipeline
 * keeps digests as state words from one stage to the next, so no byte conversions happen between. */
typedef void (*kz_compress_words_lanes_fn)(size_t n, uint32_t *const states[], const uint32_t *const words[]);

/* Compress the constant second block of a 64-byte message (0x80, zeros, length 512) into `n`
 * states. Its message schedule never changes, so it is precomputed (kz_pad64_wk) and the
 * schedule instructions drop out; a merkle level hashes this block once per share. */
typedef void (*kz_compress_pad64_lanes_fn)(size_t n, uint32_t *const states[]);

/* Whole-share pipelines for SIMD backends (share.h): one message per vector lane, every stage
 * kept transposed in registers. Declared here so a backend can carry one. */
struct kz_job;
struct kz_sub;
struct kz_result;
typedef void (*kz_group_fn)(const struct kz_job *job, const struct kz_sub *subs, size_t n,
                            struct kz_result *results);

typedef struct {
    const char *name;
    /* Optional: validate up to group_lanes shares at once (NULL: the compress functions do it all).
     * Groups smaller than group_min go to the compress functions, which waste no lanes. */
    kz_group_fn group;
    size_t group_lanes;
    size_t group_min;
    kz_compress_fn compress;
    kz_compress_lanes_fn compress_lanes;
    kz_compress_pad64_lanes_fn compress_pad64_lanes;
    kz_compress_words_lanes_fn compress_words_lanes;
} kz_backend;

/* W[t] + K[t] for the padding block of a 64-byte message (filled by kz_sha256_init). */
extern uint32_t kz_pad64_wk[64];
/* The padding block itself, for backends that just compress it. */
extern const uint8_t kz_pad64_block[64];

extern const kz_backend kz_backend_portable;
#if defined(__x86_64__) || defined(__i386__)
#define KZ_HAVE_X86_CODE 1
extern const kz_backend kz_backend_shani;
/* The SIMD share pipelines (sha256_avx2.c, sha256_avx512.c). */
void kz_group_avx2(const struct kz_job *job, const struct kz_sub *subs, size_t n,
                   struct kz_result *results);
void kz_group_avx512(const struct kz_job *job, const struct kz_sub *subs, size_t n,
                     struct kz_result *results);
#define KZ_AVX2_LANES 8
#define KZ_AVX512_LANES 16
#endif

/* What this CPU and OS can run (cpuid and xgetbv at run time, not compile-time flags). */
int kz_cpu_has_shani(void);
int kz_cpu_has_avx2(void);
int kz_cpu_has_avx512(void);

/* The backend in use; chosen once by kz_sha256_init(), changeable for tests. */
const kz_backend *kz_active_backend(void);
void kz_sha256_init(void);
/* Select by name ("auto", "portable", "sha-ni", "avx2", "avx512", "avx2+sha-ni", "avx512+sha-ni");
 * returns 0 on success, -1 if unknown or not supported by this CPU. */
int kz_select_backend(const char *name);
/* The names of every backend this CPU can run, NULL-terminated. */
const char *const *kz_supported_backends(void);

extern const uint32_t kz_sha256_iv[8];
extern const uint32_t kz_sha256_k[64];

/* Incremental SHA-256 (any length), used for the coinbase and for dsha256 of arbitrary data. */
typedef struct {
    uint32_t state[8];
    uint64_t total_len;        /* bytes fed so far */
    uint8_t buf[64];
    size_t buf_len;
} kz_sha256_ctx;

void kz_sha256_start(kz_sha256_ctx *ctx);
void kz_sha256_update(kz_sha256_ctx *ctx, const kz_backend *be, const uint8_t *data, size_t len);
void kz_sha256_finish(kz_sha256_ctx *ctx, const kz_backend *be, uint8_t out[32]);

/* SHA-256 of fixed-size messages, with the padding blocks laid out once. */
void kz_sha256_32(const kz_backend *be, const uint8_t in[32], uint8_t out[32]);
void kz_sha256_64(const kz_backend *be, const uint8_t in[64], uint8_t out[32]);
void kz_sha256_80(const kz_backend *be, const uint8_t in[80], uint8_t out[32]);
/* The same on `n` (1..KZ_MAX_LANES) independent messages at once; out[i] may alias in[i]. */
void kz_sha256_32_lanes(const kz_backend *be, size_t n, const uint8_t *const in[], uint8_t *const out[]);
void kz_sha256_64_lanes(const kz_backend *be, size_t n, const uint8_t *const in[], uint8_t *const out[]);
void kz_sha256_80_lanes(const kz_backend *be, size_t n, const uint8_t *const in[], uint8_t *const out[]);

/* Big-endian state words -> the 32 digest bytes. */
void kz_state_to_bytes(const uint32_t state[8], uint8_t out[32]);

/* Double SHA-256 of any data. */
void kz_dsha256(const kz_backend *be, const uint8_t *data, size_t len, uint8_t out[32]);

#endif
