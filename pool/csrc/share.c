/* Share validation pipeline; see share.h. Submissions go through in groups of KZ_MAX_LANES, each
 * stage as one multi-lane call, so a backend that interleaves messages (SHA-NI) or puts them in
 * vector lanes keeps its units busy. */
#include <string.h>

#include "share.h"

void kz_job_set_coinb1(kz_job *job, const kz_backend *be, const uint8_t *coinb1, size_t len)
{
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

static inline void store_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

/* The coinbase after coinb1's whole blocks: four parts, hashed as one message resuming from the
 * midstate. Built block by block so no buffer the size of coinb2 is ever needed. */
typedef struct {
    const uint8_t *part[4];
    size_t part_len[4];
    size_t len;                 /* sum of part_len */
    size_t nblocks;             /* blocks including SHA-256 padding */
    uint64_t total_bits;        /* whole coinbase length in bits, for the padding */
} coinbase_tail;

static void coinbase_tail_init(coinbase_tail *t, const kz_job *job, const kz_sub *sub)
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

/* Block `b` (64 bytes) of the padded tail. */
static void coinbase_tail_block(const coinbase_tail *t, size_t b, uint8_t out[64])
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

/* Header bytes 0..35 and 68..79; the merkle root goes in at 36 separately. */
static void header_fields(const kz_job *job, const kz_sub *sub, uint8_t header[80])
{
    uint32_t version = (job->version & ~job->version_mask) | (sub->version_bits & job->version_mask);
    store_le32(header, version);
    memcpy(header + 4, job->prevhash, 32);
    store_le32(header + 68, sub->ntime);
    store_le32(header + 72, job->nbits);
    store_le32(header + 76, sub->nonce);
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

/* First SHA-256 of each lane's coinbase. Lanes whose tails have the same block count (the usual
 * case: one extranonce size per pool) stay in one multi-lane call for every block. */
static void coinbase_first_sha_lanes(const kz_job *job, const kz_backend *be, const kz_sub *subs,
                                     size_t n, uint8_t *const out[])
{
    coinbase_tail tails[KZ_MAX_LANES];
    uint32_t st[KZ_MAX_LANES][8];
    uint8_t blk[KZ_MAX_LANES][64];
    uint32_t *states[KZ_MAX_LANES];
    const uint8_t *blocks[KZ_MAX_LANES];
    size_t most_blocks = 0;
    for (size_t j = 0; j < n; j++) {
        coinbase_tail_init(&tails[j], job, &subs[j]);
        memcpy(st[j], job->coinb1_midstate, sizeof st[j]);
        if (tails[j].nblocks > most_blocks)
            most_blocks = tails[j].nblocks;
    }
    for (size_t b = 0; b < most_blocks; b++) {
        size_t active = 0;
        for (size_t j = 0; j < n; j++) {
            if (b >= tails[j].nblocks)
                continue;
            coinbase_tail_block(&tails[j], b, blk[j]);
            states[active] = st[j];
            blocks[active] = blk[j];
            active++;
        }
        be->compress_lanes(active, states, blocks);
    }
    for (size_t j = 0; j < n; j++)
        kz_state_to_bytes(st[j], out[j]);
}

/* Up to KZ_MAX_LANES submissions through every stage together. */
static void validate_group(const kz_job *job, const kz_backend *be, const kz_sub *subs, size_t n,
                           kz_result *results)
{
    uint8_t node[KZ_MAX_LANES][64];       /* running merkle node || sibling */
    uint8_t header[KZ_MAX_LANES][80];
    uint8_t *node_p[KZ_MAX_LANES], *header_p[KZ_MAX_LANES], *hash_p[KZ_MAX_LANES];
    for (size_t j = 0; j < n; j++) {
        node_p[j] = node[j];
        header_p[j] = header[j];
        hash_p[j] = results[j].hash;
    }
    coinbase_first_sha_lanes(job, be, subs, n, node_p);
    kz_sha256_32_lanes(be, n, (const uint8_t *const *)node_p, node_p);    /* coinbase txid */
    for (size_t level = 0; level < job->branch_levels; level++) {
        for (size_t j = 0; j < n; j++)
            memcpy(node[j] + 32, job->branch + 32 * level, 32);
        kz_sha256_64_lanes(be, n, (const uint8_t *const *)node_p, node_p);
        kz_sha256_32_lanes(be, n, (const uint8_t *const *)node_p, node_p);
    }
    for (size_t j = 0; j < n; j++) {
        header_fields(job, &subs[j], header[j]);
        memcpy(header[j] + 36, node[j], 32);
    }
    kz_sha256_80_lanes(be, n, (const uint8_t *const *)header_p, node_p);
    kz_sha256_32_lanes(be, n, (const uint8_t *const *)node_p, hash_p);
    for (size_t j = 0; j < n; j++) {
        results[j].meets_share = !subs[j].share_target_negative &&
                                 kz_le256_leq(results[j].hash, subs[j].share_target);
        results[j].meets_network = !job->network_target_negative &&
                                   kz_le256_leq(results[j].hash, job->network_target);
    }
}

void kz_validate_shares(const kz_job *job, const kz_backend *be, const kz_sub *subs, size_t n,
                        kz_result *results)
{
    for (size_t i = 0; i < n; i += KZ_MAX_LANES) {
        size_t group = n - i < KZ_MAX_LANES ? n - i : KZ_MAX_LANES;
        validate_group(job, be, subs + i, group, results + i);
    }
}
