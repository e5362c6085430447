/* Argument checking and copying for pool._kzhash: every Python input is checked (type, length,
 * range) and copied into C memory here, while the GIL is held, before any hashing starts.
 * Each function returns 0 (or a non-negative count) on success, -1 with a Python exception set. */
#ifndef KZ_PYARGS_H
#define KZ_PYARGS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stddef.h>
#include <stdint.h>

/* No coinbase part can exceed a block (4 MB of weight); refuse larger before allocating. */
#define KZ_MAX_PART_BYTES 4000000

/* A growable byte buffer every variable-length input is copied into. Positions in it are offsets,
 * not pointers, because a later append may move it. */
typedef struct {
    uint8_t *data;
    size_t len;
    size_t cap;
} kzpy_arena;

void kzpy_arena_free(kzpy_arena *a);
/* Append and return the offset, or (size_t)-1 with MemoryError set. */
size_t kzpy_arena_append(kzpy_arena *a, const void *src, size_t n);

/* A bytes-like object of min_len..max_len bytes, appended to the arena. */
int kzpy_copy_bytes(PyObject *obj, const char *what, Py_ssize_t min_len, Py_ssize_t max_len,
                    kzpy_arena *arena, size_t *offset, size_t *length);
/* A bytes-like object of exactly len bytes, into a fixed C array. */
int kzpy_copy_fixed(PyObject *obj, const char *what, uint8_t *out, Py_ssize_t len);
/* A header field: any int, masked to 32 bits like pool.hashing.build_header. */
int kzpy_u32(PyObject *obj, const char *what, uint32_t *out);
/* A target: an int (saturating at 2**256 - 1; negative sets *negative) or 32 little-endian bytes. */
int kzpy_target(PyObject *obj, const char *what, uint8_t out[32], uint8_t *negative);
/* A sequence of 32-byte hashes (at most KZ_MAX_BRANCH_LEVELS), appended to the arena starting at
 * *offset; returns the level count or -1. */
Py_ssize_t kzpy_copy_branch(PyObject *branch, kzpy_arena *arena, size_t *offset);

#endif
