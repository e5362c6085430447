/* Share validation in plain C: rebuild coinbase -> merkle root -> header, hash, compare targets.
 *
 * No Python here: _kzhash.c copies everything into these structs while it holds the GIL, then
 * calls kz_validate_shares() with the GIL released. All lengths were checked by the caller;
 * this code trusts them and only reads inside the buffers they describe.
 */
#ifndef KZ_SHARE_H
#define KZ_SHARE_H

#include <stddef.h>
#include <stdint.h>

#include "sha256.h"

/* A merkle branch deeper than this cannot occur: a block would need 2^64 transactions. */
#define KZ_MAX_BRANCH_LEVELS 64

typedef struct kz_job {
    /* SHA-256 state after the whole 64-byte blocks of coinb1, computed once per batch. */
    uint32_t coinb1_midstate[8];
    uint64_t coinb1_hashed_len;        /* bytes already in the midstate (multiple of 64) */
    const uint8_t *coinb1_rest;        /* the remaining < 64 bytes of coinb1 */
    size_t coinb1_rest_len;
    const uint8_t *coinb2;
    size_t coinb2_len;
    const uint8_t *branch;             /* levels * 32 bytes, internal order */
    size_t branch_levels;
    uint32_t version;                  /* the job's nVersion */
    uint32_t version_mask;             /* bits a submission may set (0xffffffff: take its version) */
    uint32_t nbits;
    uint8_t prevhash[32];              /* header order */
    uint8_t network_target[32];        /* 256-bit little-endian */
    uint8_t network_target_negative;   /* a negative int target: no hash meets it (as in Python) */
    /* Filled by kz_job_prepare: prevhash and branch as SHA-256 message words (big-endian reads). */
    uint32_t prevhash_words[8];
    uint32_t branch_words[KZ_MAX_BRANCH_LEVELS][8];
} kz_job;

typedef struct kz_sub {
    const uint8_t *extranonce1;
    size_t extranonce1_len;
    const uint8_t *extranonce2;
    size_t extranonce2_len;
    uint32_t ntime;
    uint32_t nonce;
    uint32_t version_bits;
    uint8_t share_target[32];          /* 256-bit little-endian */
    uint8_t share_target_negative;     /* a negative int target: no hash meets it (as in Python) */
} kz_sub;

typedef struct kz_result {
    uint8_t hash[32];                  /* header dSHA256, internal order */
    uint8_t meets_share;
    uint8_t meets_network;
} kz_result;

/* Once per batch, after every other field is set: the coinb1 midstate (coinb1 must outlive the
 * job) and the word forms of prevhash and branch. */
void kz_job_prepare(kz_job *job, const kz_backend *be, const uint8_t *coinb1, size_t len);

void kz_validate_shares(const kz_job *job, const kz_backend *be, const kz_sub *subs, size_t n,
                        kz_result *results);

/* The coinbase after coinb1's whole blocks: four parts, hashed as one message resuming from the
 * midstate. Built block by block so no buffer the size of coinb2 is ever needed. */
typedef struct {
    const uint8_t *part[4];
    size_t part_len[4];
    size_t len;                 /* sum of part_len */
    size_t nblocks;             /* blocks including SHA-256 padding */
    uint64_t total_bits;        /* whole coinbase length in bits, for the padding */
} kz_coinbase_tail;

void kz_coinbase_tail_init(kz_coinbase_tail *t, const kz_job *job, const kz_sub *sub);
/* Block `b` (64 bytes) of the padded tail. */
void kz_coinbase_tail_block(const kz_coinbase_tail *t, size_t b, uint8_t out[64]);

/* Header nVersion of a submission after the job's version mask. */
static inline uint32_t kz_header_version(const kz_job *job, const kz_sub *sub)
{
    return (job->version & ~job->version_mask) | (sub->version_bits & job->version_mask);
}

/* Fill meets_share / meets_network from the hash already in `res`. */
void kz_judge(const kz_job *job, const kz_sub *sub, kz_result *res);

/* 1 if the 32-byte little-endian numbers satisfy a <= b. */
int kz_le256_leq(const uint8_t a[32], const uint8_t b[32]);

/* Fold a coinbase hash up a branch (levels * 32 bytes); root may alias coinbase_hash. */
void kz_merkle_root(const kz_backend *be, const uint8_t coinbase_hash[32], const uint8_t *branch,
                    size_t levels, uint8_t root[32]);

#endif
