/* The whole-share SIMD pipeline, written once and compiled per instruction set.
 *
 * Included by sha256_avx2.c and sha256_avx512.c after they define:
 *   LANES            messages per vector (8 or 16)
 *   KZ_TARGET        the __attribute__((target(...))) for every function here
 *   V                the vector type; VMASK the lane-mask type
 *   V_SET1, V_ADD, V_ROR, V_SHR, V_XOR3, V_CH, V_MAJ, V_LOAD, V_STORE
 *   V_ACTIVE(nb, b)  mask of lanes whose block count nb (a V) exceeds b
 *   V_SELECT(m, new, old)
 *   GROUP_FN         the exported function name
 *
 * Vector lane j holds submission j's value, so one instruction advances LANES shares. The state
 * never leaves the registers between stages: a digest's state words are directly the first eight
 * message words of the next hash (merkle node, header), constant words are broadcasts, and only
 * the coinbase blocks (bytes) and the final hashes are transposed through memory.
 */

KZ_TARGET static inline V bsig0(V x) { return V_XOR3(V_ROR(x, 2), V_ROR(x, 13), V_ROR(x, 22)); }
KZ_TARGET static inline V bsig1(V x) { return V_XOR3(V_ROR(x, 6), V_ROR(x, 11), V_ROR(x, 25)); }
KZ_TARGET static inline V ssig0(V x) { return V_XOR3(V_ROR(x, 7), V_ROR(x, 18), V_SHR(x, 3)); }
KZ_TARGET static inline V ssig1(V x) { return V_XOR3(V_ROR(x, 17), V_ROR(x, 19), V_SHR(x, 10)); }

#define SIMD_ROUND(a, b, c, d, e, f, g, h, wk)                                     \
    do {                                                                           \
        V t1_ = V_ADD(V_ADD(h, bsig1(e)), V_ADD(V_CH(e, f, g), (wk)));             \
        V t2_ = V_ADD(bsig0(a), V_MAJ(a, b, c));                                   \
        d = V_ADD(d, t1_);                                                         \
        h = V_ADD(t1_, t2_);                                                       \
    } while (0)

/* The eight rounds starting at i; the rotation of a..h is done by renaming, not moving. */
#define SIMD_8ROUNDS(i, WK)                                                        \
    do {                                                                           \
        SIMD_ROUND(a, b, c, d, e, f, g, h, WK((i) + 0));                           \
        SIMD_ROUND(h, a, b, c, d, e, f, g, WK((i) + 1));                           \
        SIMD_ROUND(g, h, a, b, c, d, e, f, WK((i) + 2));                           \
        SIMD_ROUND(f, g, h, a, b, c, d, e, WK((i) + 3));                           \
        SIMD_ROUND(e, f, g, h, a, b, c, d, WK((i) + 4));                           \
        SIMD_ROUND(d, e, f, g, h, a, b, c, WK((i) + 5));                           \
        SIMD_ROUND(c, d, e, f, g, h, a, b, WK((i) + 6));                           \
        SIMD_ROUND(b, c, d, e, f, g, h, a, WK((i) + 7));                           \
    } while (0)

/* One block into st[0..7], message words w[0..15] (overwritten by the schedule). */
KZ_TARGET __attribute__((noinline)) static void simd_compress(V st[8], V w[16])
{
    V a = st[0], b = st[1], c = st[2], d = st[3], e = st[4], f = st[5], g = st[6], h = st[7];
#define WK_FIRST(t) V_ADD(w[(t)], V_SET1(kz_sha256_k[(t)]))
#define WK_NEXT(t)                                                                             \
    (w[(t) & 15] = V_ADD(V_ADD(w[(t) & 15], ssig0(w[((t) - 15) & 15])),                         \
                         V_ADD(w[((t) - 7) & 15], ssig1(w[((t) - 2) & 15]))),                   \
     V_ADD(w[(t) & 15], V_SET1(kz_sha256_k[(t)])))
    SIMD_8ROUNDS(0, WK_FIRST);
    SIMD_8ROUNDS(8, WK_FIRST);
    for (int i = 16; i < 64; i += 8)
        SIMD_8ROUNDS(i, WK_NEXT);
#undef WK_FIRST
#undef WK_NEXT
    st[0] = V_ADD(st[0], a); st[1] = V_ADD(st[1], b); st[2] = V_ADD(st[2], c); st[3] = V_ADD(st[3], d);
    st[4] = V_ADD(st[4], e); st[5] = V_ADD(st[5], f); st[6] = V_ADD(st[6], g); st[7] = V_ADD(st[7], h);
}

/* The constant padding block of a 64-byte message: W+K precomputed, no schedule at all. */
KZ_TARGET __attribute__((noinline)) static void simd_compress_pad64(V st[8])
{
    V a = st[0], b = st[1], c = st[2], d = st[3], e = st[4], f = st[5], g = st[6], h = st[7];
#define WK_PAD(t) V_SET1(kz_pad64_wk[(t)])
    for (int i = 0; i < 64; i += 8)
        SIMD_8ROUNDS(i, WK_PAD);
#undef WK_PAD
    st[0] = V_ADD(st[0], a); st[1] = V_ADD(st[1], b); st[2] = V_ADD(st[2], c); st[3] = V_ADD(st[3], d);
    st[4] = V_ADD(st[4], e); st[5] = V_ADD(st[5], f); st[6] = V_ADD(st[6], g); st[7] = V_ADD(st[7], h);
}

KZ_TARGET static inline void simd_reset(V st[8])
{
    for (int k = 0; k < 8; k++)
        st[k] = V_SET1(kz_sha256_iv[k]);
}

/* st := SHA-256 of the 32-byte digest in st. */
KZ_TARGET static inline void simd_hash_digest(V st[8])
{
    V w[16];
    for (int k = 0; k < 8; k++)
        w[k] = st[k];
    w[8] = V_SET1(0x80000000u);
    for (int k = 9; k < 15; k++)
        w[k] = V_SET1(0);
    w[15] = V_SET1(256);
    simd_reset(st);
    simd_compress(st, w);
}

static inline uint32_t simd_load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

/* First SHA-256 of each lane's coinbase. Lanes with fewer tail blocks keep their state once done. */
KZ_TARGET static void simd_coinbase(const kz_job *job, const kz_sub *const lane_sub[LANES], V st[8])
{
    kz_coinbase_tail tails[LANES];
    __attribute__((aligned(64))) uint32_t nblocks[LANES];
    __attribute__((aligned(64))) uint32_t words[16][LANES];
    uint8_t block[64];
    size_t most = 0;
    for (int j = 0; j < LANES; j++) {
        kz_coinbase_tail_init(&tails[j], job, lane_sub[j]);
        /* A tail is at most 4 * KZ_MAX_PART_BYTES long, far below 2^32 blocks. */
        nblocks[j] = (uint32_t)tails[j].nblocks;
        if (tails[j].nblocks > most)
            most = tails[j].nblocks;
    }
    for (int k = 0; k < 8; k++)
        st[k] = V_SET1(job->coinb1_midstate[k]);
    V nb = V_LOAD(nblocks);
    for (size_t b = 0; b < most; b++) {
        for (int j = 0; j < LANES; j++) {
            if (b < tails[j].nblocks)
                kz_coinbase_tail_block(&tails[j], b, block);
            else
                memset(block, 0, sizeof block);     /* lane finished: hashed, then discarded */
            for (int t = 0; t < 16; t++)
                words[t][j] = simd_load_be32(block + 4 * t);
        }
        V w[16], before[8];
        for (int t = 0; t < 16; t++)
            w[t] = V_LOAD(words[t]);
        for (int k = 0; k < 8; k++)
            before[k] = st[k];
        simd_compress(st, w);
        VMASK active = V_ACTIVE(nb, (uint32_t)b);
        for (int k = 0; k < 8; k++)
            st[k] = V_SELECT(active, st[k], before[k]);
    }
}

void GROUP_FN(const kz_job *job, const kz_sub *subs, size_t n, kz_result *results)
    KZ_TARGET;

/* Validate n (1..LANES) shares; lanes past n repeat the last share and are discarded. */
void GROUP_FN(const kz_job *job, const kz_sub *subs, size_t n, kz_result *results)
{
    const kz_sub *lane_sub[LANES];
    __attribute__((aligned(64))) uint32_t version[LANES], ntime[LANES], nonce[LANES];
    __attribute__((aligned(64))) uint32_t out[8][LANES];
    for (int j = 0; j < LANES; j++) {
        lane_sub[j] = &subs[(size_t)j < n ? (size_t)j : n - 1];
        version[j] = __builtin_bswap32(kz_header_version(job, lane_sub[j]));
        ntime[j] = __builtin_bswap32(lane_sub[j]->ntime);
        nonce[j] = __builtin_bswap32(lane_sub[j]->nonce);
    }
    V st[8], w[16];
    simd_coinbase(job, lane_sub, st);
    simd_hash_digest(st);                                   /* coinbase txid */
    for (size_t level = 0; level < job->branch_levels; level++) {
        for (int k = 0; k < 8; k++) {
            w[k] = st[k];
            w[8 + k] = V_SET1(job->branch_words[level][k]);
        }
        simd_reset(st);
        simd_compress(st, w);
        simd_compress_pad64(st);
        simd_hash_digest(st);
    }
    /* Header block 1: version | prevhash | merkle root bytes 0..27. */
    V root7 = st[7];
    w[0] = V_LOAD(version);
    for (int k = 0; k < 8; k++)
        w[1 + k] = V_SET1(job->prevhash_words[k]);
    for (int k = 0; k < 7; k++)
        w[9 + k] = st[k];
    simd_reset(st);
    simd_compress(st, w);
    /* Header block 2: merkle root bytes 28..31 | ntime | nbits | nonce | padding for 640 bits. */
    w[0] = root7;
    w[1] = V_LOAD(ntime);
    w[2] = V_SET1(__builtin_bswap32(job->nbits));
    w[3] = V_LOAD(nonce);
    w[4] = V_SET1(0x80000000u);
    for (int k = 5; k < 15; k++)
        w[k] = V_SET1(0);
    w[15] = V_SET1(640);
    simd_compress(st, w);
    simd_hash_digest(st);
    for (int k = 0; k < 8; k++)
        V_STORE(out[k], st[k]);
    for (size_t j = 0; j < n; j++) {
        for (int k = 0; k < 8; k++) {
            uint32_t v = out[k][j];
            results[j].hash[4 * k] = (uint8_t)(v >> 24);
            results[j].hash[4 * k + 1] = (uint8_t)(v >> 16);
            results[j].hash[4 * k + 2] = (uint8_t)(v >> 8);
            results[j].hash[4 * k + 3] = (uint8_t)v;
        }
        kz_judge(job, &subs[j], &results[j]);
    }
}
