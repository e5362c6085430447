/* The share pipeline with AVX2: 8 submissions per instruction, for CPUs without SHA-NI or AVX-512
 * (AVX2 has no rotate or three-input logic, so those are built from shifts and boolean ops).
 * Only called when cpuid and xgetbv report AVX2 usable; no -mavx2 for the rest of the module. */
#include <string.h>

#include "sha256.h"
#include "share.h"

#ifdef KZ_HAVE_X86_CODE

#include <immintrin.h>

#define LANES KZ_AVX2_LANES
#define KZ_TARGET __attribute__((target("avx2")))
#define V __m256i
#define VMASK __m256i
#define V_SET1(x) _mm256_set1_epi32((int)(x))
#define V_ADD(a, b) _mm256_add_epi32((a), (b))
#define V_ROR(x, n) _mm256_or_si256(_mm256_srli_epi32((x), (n)), _mm256_slli_epi32((x), 32 - (n)))
#define V_SHR(x, n) _mm256_srli_epi32((x), (n))
#define V_XOR3(a, b, c) _mm256_xor_si256(_mm256_xor_si256((a), (b)), (c))
#define V_CH(e, f, g) _mm256_xor_si256(_mm256_and_si256((e), _mm256_xor_si256((f), (g))), (g))
#define V_MAJ(a, b, c) \
    _mm256_or_si256(_mm256_and_si256((a), (b)), _mm256_and_si256((c), _mm256_or_si256((a), (b))))
#define V_LOAD(p) _mm256_load_si256((const __m256i *)(p))
#define V_STORE(p, v) _mm256_store_si256((__m256i *)(p), (v))
/* Block counts are far below 2^31, so the signed compare is exact. */
#define V_ACTIVE(nb, b) _mm256_cmpgt_epi32((nb), _mm256_set1_epi32((int)(b)))
#define V_SELECT(m, new, old) _mm256_blendv_epi8((old), (new), (m))
#define GROUP_FN kz_group_avx2

#include "simd_group.h"

#endif
