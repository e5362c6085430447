/* Share validation pipeline; see share.h. Submissions go through in groups of KZ_MAX_LANES, each
 * stage as one multi-lane call, so a backend that interleaves messages (SHA-NI) or puts them in
 * vector lanes keeps its units busy. */
#include <string.h>

#include "share.h"

static inline uint32_t load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static inline uint32_t bswap32(uint32_t v) { return __builtin_bswap32(v); }

void kz_job_prepare(kz_job *job, const kz_backend *be, const uint8_t *coinb1, size_t len)
{
    for (int i = 0; i < 8; i++)
        job->prevhash_words[i] = load_be32(job->prevhash + 4 * i);
    for (size_t level = 0; level < job->branch_levels; level++)
        for (int i = 0; i < 8; i++)
            job->branch_words[level][i] = load_be32(job->branch + 32 * level + 4 * i);
    size_t whole = len / 64;
    memcpy(job->coinb1_midstate, kz_sha256_iv, sizeof job->coinb1_midstate);
    if (whole)
        be->compress(job->coinb1_midstate, coinb1, whole);
    job->coinb1_hashed_len = (uint64_t)whole * 64;
    job->coinb1_rest = coinb1 + whole * 64;
    job->coinb1_rest_len = len - whole * 64;
}

int kz_le256_leq(const uint8_t a[32], const uint8_t b[32])
{
    for (int i = 31; i >= 0; i--) {
        if (a[i] != b[i])
            return a[i] < b[i];
    }
    return 1;
}

void kz_coinbase_tail_init(kz_coinbase_tail *t, const kz_job *job, const kz_sub *sub)
{
    t->part[0] = job->coinb1_rest;  t->part_len[0] = job->coinb1_rest_len;
    t->part[1] = sub->extranonce1;  t->part_len[1] = sub->extranonce1_len;
    t->part[2] = sub->extranonce2;  t->part_len[2] = sub->extranonce2_len;
    t->part[3] = job->coinb2;       t->part_len[3] = job->coinb2_len;
    t->len = t->part_len[0] + t->part_len[1] + t->part_len[2] + t->part_len[3];
    t->nblocks = (t->len + 9 + 63) / 64;    /* 0x80 byte and 8 length bytes must fit */
    t->total_bits = (job->coinb1_hashed_len + (uint64_t)t->len) * 8;
}

static inline void store_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

void kz_coinbase_tail_block(const kz_coinbase_tail *t, size_t b, uint8_t out[64])
{
    size_t lo = 64 * b, hi = lo + 64, pos = 0;
    memset(out, 0, 64);
    for (int k = 0; k < 4; k++) {
        size_t start = pos, end = pos + t->part_len[k];
        pos = end;
        if (end <= lo || start >= hi)
            continue;
        size_t from = start > lo ? start : lo;
        size_t to = end < hi ? end : hi;
        memcpy(out + (from - lo), t->part[k] + (from - start), to - from);
    }
    if (t->len >= lo && t->len < hi)
        out[t->len - lo] = 0x80;
    if (b + 1 == t->nblocks)
        store_be64(out + 56, t->total_bits);
}

void kz_merkle_root(const kz_backend *be, const uint8_t coinbase_hash[32], const uint8_t *branch,
                    size_t levels, uint8_t root[32])
{
    uint8_t node[64];
    memcpy(node, coinbase_hash, 32);
    for (size_t i = 0; i < levels; i++) {
        memcpy(node + 32, branch + 32 * i, 32);
        kz_sha256_64(be, node, node);
        kz_sha256_32(be, node, node);
    }
    memcpy(root, node, 32);
}

/* First SHA-256 of each lane's coinbase, as state words. Lanes whose tails have the same block
 * count (the usual case: one extranonce size per pool) stay in one multi-lane call for every block. */
static void coinbase_first_sha_lanes(const kz_job *job, const kz_backend *be, const kz_sub *subs,
                                     size_t n, uint32_t st[][8])
{
    kz_coinbase_tail tails[KZ_MAX_LANES];
    uint8_t blk[KZ_MAX_LANES][64];
    uint32_t *states[KZ_MAX_LANES];
    const uint8_t *blocks[KZ_MAX_LANES];
    size_t most_blocks = 0;
    for (size_t j = 0; j < n; j++) {
        kz_coinbase_tail_init(&tails[j], job, &subs[j]);
        memcpy(st[j], job->coinb1_midstate, sizeof st[j]);
        if (tails[j].nblocks > most_blocks)
            most_blocks = tails[j].nblocks;
    }
    for (size_t b = 0; b < most_blocks; b++) {
        size_t active = 0;
        for (size_t j = 0; j < n; j++) {
            if (b >= tails[j].nblocks)
                continue;
            kz_coinbase_tail_block(&tails[j], b, blk[j]);
            states[active] = st[j];
            blocks[active] = blk[j];
            active++;
        }
        be->compress_lanes(active, states, blocks);
    }
}

/* Per-lane working set of validate_group. Digests stay as SHA-256 state words throughout: a
 * digest's bytes read as big-endian words are its state words, so a digest becomes the next
 * message without any byte shuffling. */
typedef struct {
    uint32_t st[KZ_MAX_LANES][8];        /* the state being computed */
    uint32_t node[KZ_MAX_LANES][16];     /* merkle node || sibling, as message words */
    uint32_t digest_msg[KZ_MAX_LANES][16]; /* a 32-byte digest + its constant padding */
    uint32_t header1[KZ_MAX_LANES][16];  /* header bytes 0..63 */
    uint32_t header2[KZ_MAX_LANES][16];  /* header bytes 64..79 + padding */
    uint32_t *states[KZ_MAX_LANES];
    const uint32_t *msgs[KZ_MAX_LANES];
} group_t;

static void states_reset(group_t *g, size_t n)
{
    for (size_t j = 0; j < n; j++)
        memcpy(g->st[j], kz_sha256_iv, sizeof g->st[j]);
}

static void compress_msgs(const kz_backend *be, group_t *g, size_t n, uint32_t msg[][16])
{
    for (size_t j = 0; j < n; j++)
        g->msgs[j] = msg[j];
    be->compress_words_lanes(n, g->states, g->msgs);
}

/* st := SHA-256 of the 32-byte digest currently in st. */
static void hash_digest(const kz_backend *be, group_t *g, size_t n)
{
    for (size_t j = 0; j < n; j++)
        memcpy(g->digest_msg[j], g->st[j], 8 * sizeof(uint32_t));
    states_reset(g, n);
    compress_msgs(be, g, n, g->digest_msg);
}

/* Up to KZ_MAX_LANES submissions through every stage together. */
static void validate_group(const kz_job *job, const kz_backend *be, const kz_sub *subs, size_t n,
                           kz_result *results)
{
    group_t g;
    for (size_t j = 0; j < n; j++) {
        g.states[j] = g.st[j];
        /* Padding words of a 32-byte message (256 bits) and of the header's second block (640 bits). */
        memset(g.digest_msg[j] + 8, 0, 8 * sizeof(uint32_t));
        g.digest_msg[j][8] = 0x80000000u;
        g.digest_msg[j][15] = 256;
        memset(g.header2[j] + 4, 0, 12 * sizeof(uint32_t));
        g.header2[j][4] = 0x80000000u;
        g.header2[j][15] = 640;
    }
    coinbase_first_sha_lanes(job, be, subs, n, g.st);
    hash_digest(be, &g, n);                                  /* coinbase txid */
    for (size_t level = 0; level < job->branch_levels; level++) {
        for (size_t j = 0; j < n; j++) {
            memcpy(g.node[j], g.st[j], 8 * sizeof(uint32_t));
            memcpy(g.node[j] + 8, job->branch_words[level], 8 * sizeof(uint32_t));
        }
        states_reset(&g, n);
        compress_msgs(be, &g, n, g.node);
        be->compress_pad64_lanes(n, g.states);
        hash_digest(be, &g, n);
    }
    /* Header: little-endian integers, read by SHA-256 as big-endian words, hence bswap32. */
    for (size_t j = 0; j < n; j++) {
        const kz_sub *sub = &subs[j];
        g.header1[j][0] = bswap32(kz_header_version(job, sub));
        memcpy(g.header1[j] + 1, job->prevhash_words, 8 * sizeof(uint32_t));
        memcpy(g.header1[j] + 9, g.st[j], 7 * sizeof(uint32_t));   /* merkle root, bytes 36..63 */
        g.header2[j][0] = g.st[j][7];                               /* merkle root, bytes 64..67 */
        g.header2[j][1] = bswap32(sub->ntime);
        g.header2[j][2] = bswap32(job->nbits);
        g.header2[j][3] = bswap32(sub->nonce);
    }
    states_reset(&g, n);
    compress_msgs(be, &g, n, g.header1);
    compress_msgs(be, &g, n, g.header2);
    hash_digest(be, &g, n);
    for (size_t j = 0; j < n; j++) {
        kz_state_to_bytes(g.st[j], results[j].hash);
        kz_judge(job, &subs[j], &results[j]);
    }
}

void kz_judge(const kz_job *job, const kz_sub *sub, kz_result *res)
{
    res->meets_share = !sub->share_target_negative && kz_le256_leq(res->hash, sub->share_target);
    res->meets_network = !job->network_target_negative && kz_le256_leq(res->hash, job->network_target);
}

void kz_validate_shares(const kz_job *job, const kz_backend *be, const kz_sub *subs, size_t n,
                        kz_result *results)
{
    if (be->group) {
        /* Full SIMD groups while enough shares are left to fill most lanes. */
        while (n >= be->group_min) {
            size_t group = n < be->group_lanes ? n : be->group_lanes;
            be->group(job, subs, group, results);
            subs += group;
            results += group;
            n -= group;
        }
    }
    for (size_t i = 0; i < n; i += KZ_MAX_LANES) {
        size_t group = n - i < KZ_MAX_LANES ? n - i : KZ_MAX_LANES;
        validate_group(job, be, subs + i, group, results + i);
    }
}
