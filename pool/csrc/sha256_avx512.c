/* The share pipeline with AVX-512F: 16 submissions per instruction (one per 32-bit lane), using
 * the native rotate (vprold) and three-input logic (vpternlogd). Only called when cpuid and
 * xgetbv report AVX-512F usable; the rest of the module is built without -mavx512f. */
#include <string.h>

#include "sha256.h"
#include "share.h"

#ifdef KZ_HAVE_X86_CODE

#include <immintrin.h>

#define LANES KZ_AVX512_LANES
#define KZ_TARGET __attribute__((target("avx512f")))
#define V __m512i
#define VMASK __mmask16
#define V_SET1(x) _mm512_set1_epi32((int)(x))
#define V_ADD(a, b) _mm512_add_epi32((a), (b))
#define V_ROR(x, n) _mm512_ror_epi32((x), (n))
#define V_SHR(x, n) _mm512_srli_epi32((x), (n))
#define V_XOR3(a, b, c) _mm512_ternarylogic_epi32((a), (b), (c), 0x96)
#define V_CH(e, f, g) _mm512_ternarylogic_epi32((e), (f), (g), 0xCA)
#define V_MAJ(a, b, c) _mm512_ternarylogic_epi32((a), (b), (c), 0xE8)
#define V_LOAD(p) _mm512_load_si512((const void *)(p))
#define V_STORE(p, v) _mm512_store_si512((void *)(p), (v))
#define V_ACTIVE(nb, b) _mm512_cmpgt_epu32_mask((nb), _mm512_set1_epi32((int)(b)))
#define V_SELECT(m, new, old) _mm512_mask_blend_epi32((m), (old), (new))
#define GROUP_FN kz_group_avx512

#include "simd_group.h"

#endif
