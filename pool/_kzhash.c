/* pool._kzhash: C-accelerated double SHA-256, merkle folding and batched share validation.
 *
 * Python-facing layer only: it checks every argument (type, length, range), copies what it needs
 * into C memory while it holds the GIL, then hashes with the GIL released (csrc/share.c) and builds
 * the results. Bad input raises TypeError or ValueError; nothing is read outside a checked buffer.
 *
 * Integers for header fields (version, ntime, nbits, nonce) are masked to 32 bits, exactly as the
 * pure-Python reference pool.hashing.build_header does, so both paths agree on every int.
 * Targets are 256-bit little-endian: an int or 32 bytes in little-endian order. Ints compare exactly
 * as Python would: values >= 2**256 saturate (every hash is below them), negative ones meet nothing.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdlib.h>
#include <string.h>

#ifndef Py_T_OBJECT_EX          /* before 3.12 the member types live in structmember.h */
#include <structmember.h>
#define Py_T_OBJECT_EX T_OBJECT_EX
#define Py_READONLY READONLY
#endif

#include "csrc/sha256.h"
#include "csrc/share.h"

/* One call handles at most this many submissions / headers: bounds the memory a single call can
 * allocate (about 100 bytes per share) and a miner-facing batch is far smaller. */
#define KZ_MAX_BATCH (1 << 20)
/* No coinbase part can exceed a block (4 MB of weight); refuse larger before allocating. */
#define KZ_MAX_PART_BYTES 4000000
/* Above this many bytes dsha256() releases the GIL; below it the release costs more than it frees. */
#define KZ_NOGIL_BYTES 65536

/* ---------- growable byte arena: every variable-length input is copied here ---------- */

typedef struct {
    uint8_t *data;
    size_t len;
    size_t cap;
} arena_t;

static void arena_free(arena_t *a)
{
    free(a->data);
    a->data = NULL;
    a->len = a->cap = 0;
}

/* Append and return the offset, or (size_t)-1 with MemoryError set. Offsets, not pointers,
 * because a later append may move the buffer. */
static size_t arena_append(arena_t *a, const void *src, size_t n)
{
    if (a->cap - a->len < n) {
        size_t want = a->cap ? a->cap : 1024;   /* a typical job + a few shares: one malloc */
        while (want - a->len < n) {
            if (want > ((size_t)PY_SSIZE_T_MAX) / 2) {
                PyErr_NoMemory();
                return (size_t)-1;
            }
            want *= 2;
        }
        uint8_t *grown = realloc(a->data, want);
        if (!grown) {
            PyErr_NoMemory();
            return (size_t)-1;
        }
        a->data = grown;
        a->cap = want;
    }
    size_t off = a->len;
    if (n)
        memcpy(a->data + off, src, n);
    a->len += n;
    return off;
}

/* ---------- argument conversion ---------- */

/* Copy a bytes-like object into the arena; length must be within [min_len, max_len]. */
static int copy_bytes_arg(PyObject *obj, const char *what, Py_ssize_t min_len, Py_ssize_t max_len,
                          arena_t *arena, size_t *offset, size_t *length)
{
    const char *src;
    Py_ssize_t n;
    Py_buffer view;
    int have_view = 0;

    if (PyBytes_Check(obj)) {
        src = PyBytes_AS_STRING(obj);
        n = PyBytes_GET_SIZE(obj);
    } else {
        if (PyUnicode_Check(obj) || PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) != 0) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s must be a bytes-like object, not %.100s", what,
                         Py_TYPE(obj)->tp_name);
            return -1;
        }
        have_view = 1;
        src = view.buf;
        n = view.len;
    }
    int rc = 0;
    if (n < min_len || n > max_len) {
        if (min_len == max_len)
            PyErr_Format(PyExc_ValueError, "%s must be %zd bytes, got %zd", what, min_len, n);
        else
            PyErr_Format(PyExc_ValueError, "%s must be %zd..%zd bytes, got %zd", what, min_len,
                         max_len, n);
        rc = -1;
    } else {
        *offset = arena_append(arena, src, (size_t)n);
        *length = (size_t)n;
        if (*offset == (size_t)-1)
            rc = -1;
    }
    if (have_view)
        PyBuffer_Release(&view);
    return rc;
}

/* Copy a bytes-like object of exactly `len` bytes into a fixed C array. */
static int copy_fixed(PyObject *obj, const char *what, uint8_t *out, Py_ssize_t len)
{
    if (PyBytes_Check(obj)) {
        if (PyBytes_GET_SIZE(obj) != len) {
            PyErr_Format(PyExc_ValueError, "%s must be %zd bytes, got %zd", what, len,
                         PyBytes_GET_SIZE(obj));
            return -1;
        }
        memcpy(out, PyBytes_AS_STRING(obj), (size_t)len);
        return 0;
    }
    Py_buffer view;
    if (PyUnicode_Check(obj) || PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a bytes-like object, not %.100s", what,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    int rc = 0;
    if (view.len != len) {
        PyErr_Format(PyExc_ValueError, "%s must be %zd bytes, got %zd", what, len, view.len);
        rc = -1;
    } else {
        memcpy(out, view.buf, (size_t)len);
    }
    PyBuffer_Release(&view);
    return rc;
}

/* A header field: any int, masked to 32 bits like pool.hashing.build_header. */
static int u32_arg(PyObject *obj, const char *what, uint32_t *out)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLongMask(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = (uint32_t)v;
    return 0;
}

/* The last int target converted, and its bytes: a batch mostly repeats one share target object
 * (the session's difficulty), and an int is immutable, so the same object means the same bytes. */
static PyObject *target_cached;
static uint8_t target_cached_le[32];
static uint8_t target_cached_negative;

static int target_from_int(PyObject *obj, const char *what, uint8_t out[32], uint8_t *negative);

/* A target: an int (saturating at 2**256 - 1; negative sets *negative) or 32 little-endian bytes. */
static int target_arg(PyObject *obj, const char *what, uint8_t out[32], uint8_t *negative)
{
    *negative = 0;
    if (!PyLong_Check(obj))
        return copy_fixed(obj, what, out, 32);
    if (obj == target_cached) {
        memcpy(out, target_cached_le, 32);
        *negative = target_cached_negative;
        return 0;
    }
    if (target_from_int(obj, what, out, negative) < 0)
        return -1;
    if (PyLong_CheckExact(obj)) {      /* a subclass could carry mutable state; only cache plain ints */
        Py_INCREF(obj);
        Py_XSETREF(target_cached, obj);
        memcpy(target_cached_le, out, 32);
        target_cached_negative = *negative;
    }
    return 0;
}

static int target_from_int(PyObject *obj, const char *what, uint8_t out[32], uint8_t *negative)
{
#if PY_VERSION_HEX >= 0x030E0000
    int sign;
    if (PyLong_GetSign(obj, &sign) < 0)
        return -1;
#else
    int sign = _PyLong_Sign(obj);
#endif
    if (sign < 0) {
        memset(out, 0, 32);
        *negative = 1;
        return 0;
    }
#if PY_VERSION_HEX >= 0x030D0000
    Py_ssize_t need = PyLong_AsNativeBytes(obj, out, 32,
                                           Py_ASNATIVEBYTES_LITTLE_ENDIAN |
                                               Py_ASNATIVEBYTES_UNSIGNED_BUFFER);
    if (need < 0)
        return -1;
    if (need > 32)
        memset(out, 0xff, 32);
#else
    if (_PyLong_AsByteArray((PyLongObject *)obj, out, 32, 1, 0) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        /* Too big for 256 bits: every hash is below it, as with the int itself. */
        PyErr_Clear();
        memset(out, 0xff, 32);
    }
#endif
    return 0;
}

/* ---------- module state: interned attribute names for Submission-like objects ---------- */

static PyObject *str_extranonce1, *str_extranonce2, *str_ntime, *str_nonce, *str_version,
    *str_share_target;

/* ---------- dsha256 / sha256 ---------- */

static PyObject *hash_bytes(PyObject *arg, int twice)
{
    Py_buffer view;
    if (PyUnicode_Check(arg) || PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "data must be a bytes-like object, not %.100s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    const kz_backend *be = kz_active_backend();
    uint8_t out[32];
    const uint8_t *data = view.buf;
    uint8_t *copy = NULL;
    size_t len = (size_t)view.len;
    int release = len >= KZ_NOGIL_BYTES;
    if (release && !PyBytes_Check(arg)) {
        /* A mutable buffer could be resized by another thread once the GIL is released. */
        copy = malloc(len);
        if (!copy) {
            PyBuffer_Release(&view);
            return PyErr_NoMemory();
        }
        memcpy(copy, data, len);
        data = copy;
    }
    if (release) {
        Py_BEGIN_ALLOW_THREADS
        if (twice)
            kz_dsha256(be, data, len, out);
        else {
            kz_sha256_ctx ctx;
            kz_sha256_start(&ctx);
            kz_sha256_update(&ctx, be, data, len);
            kz_sha256_finish(&ctx, be, out);
        }
        Py_END_ALLOW_THREADS
    } else if (twice) {
        kz_dsha256(be, data, len, out);
    } else {
        kz_sha256_ctx ctx;
        kz_sha256_start(&ctx);
        kz_sha256_update(&ctx, be, data, len);
        kz_sha256_finish(&ctx, be, out);
    }
    free(copy);
    PyBuffer_Release(&view);
    return PyBytes_FromStringAndSize((const char *)out, 32);
}

static PyObject *py_dsha256(PyObject *self, PyObject *arg) { return hash_bytes(arg, 1); }
static PyObject *py_sha256(PyObject *self, PyObject *arg) { return hash_bytes(arg, 0); }

/* ---------- merkle branch ---------- */

/* Copy a sequence of 32-byte hashes into the arena; returns the level count or -1. */
static Py_ssize_t copy_branch(PyObject *branch, arena_t *arena, size_t *offset)
{
    /* A tuple snapshot: a list could be resized by code run while converting its items. */
    PyObject *items = PySequence_Tuple(branch);
    if (!items) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "merkle_branch must be a sequence of bytes, not %.100s",
                         Py_TYPE(branch)->tp_name);
        }
        return -1;
    }
    if (PyBytes_Check(branch) || PyUnicode_Check(branch) || PyByteArray_Check(branch)) {
        Py_DECREF(items);
        PyErr_SetString(PyExc_TypeError, "merkle_branch must be a sequence of 32-byte hashes");
        return -1;
    }
    Py_ssize_t levels = PyTuple_GET_SIZE(items);
    if (levels > KZ_MAX_BRANCH_LEVELS) {
        Py_DECREF(items);
        PyErr_Format(PyExc_ValueError, "merkle_branch has %zd levels, at most %d possible", levels,
                     KZ_MAX_BRANCH_LEVELS);
        return -1;
    }
    *offset = arena->len;
    for (Py_ssize_t i = 0; i < levels; i++) {
        size_t off, len;
        if (copy_bytes_arg(PyTuple_GET_ITEM(items, i), "merkle_branch item", 32, 32, arena, &off,
                           &len) < 0) {
            Py_DECREF(items);
            return -1;
        }
    }
    Py_DECREF(items);
    return levels;
}

static PyObject *py_merkle_root(PyObject *self, PyObject *args)
{
    PyObject *coinbase_hash_obj, *branch_obj;
    if (!PyArg_ParseTuple(args, "OO:merkle_root", &coinbase_hash_obj, &branch_obj))
        return NULL;
    uint8_t node[32];
    arena_t arena = {0};
    size_t offset = 0;
    if (copy_fixed(coinbase_hash_obj, "coinbase_hash", node, 32) < 0)
        return NULL;
    Py_ssize_t levels = copy_branch(branch_obj, &arena, &offset);
    if (levels < 0) {
        arena_free(&arena);
        return NULL;
    }
    kz_merkle_root(kz_active_backend(), node, arena.data ? arena.data + offset : NULL,
                   (size_t)levels, node);
    arena_free(&arena);
    return PyBytes_FromStringAndSize((const char *)node, 32);
}

/* ---------- hash_headers: raw dSHA256 of many 80-byte headers ---------- */

static PyObject *py_hash_headers(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    if (PyUnicode_Check(arg) || PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "headers must be a bytes-like object, not %.100s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    if (view.len % 80 != 0 || view.len / 80 > KZ_MAX_BATCH) {
        PyErr_Format(PyExc_ValueError,
                     "headers must be a concatenation of at most %d 80-byte headers, got %zd bytes",
                     KZ_MAX_BATCH, view.len);
        PyBuffer_Release(&view);
        return NULL;
    }
    size_t n = (size_t)view.len / 80;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * 32));
    if (!out) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const uint8_t *src = view.buf;
    uint8_t *copy = NULL;
    if (!PyBytes_Check(arg) && n) {
        /* Only immutable bytes may be read with the GIL released; copy anything else. */
        copy = malloc(n * 80);
        if (!copy) {
            Py_DECREF(out);
            PyBuffer_Release(&view);
            return PyErr_NoMemory();
        }
        memcpy(copy, src, n * 80);
        src = copy;
    }
    uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
    const kz_backend *be = kz_active_backend();
    Py_BEGIN_ALLOW_THREADS
    for (size_t i = 0; i < n; i += KZ_MAX_LANES) {
        size_t group = n - i < KZ_MAX_LANES ? n - i : KZ_MAX_LANES;
        const uint8_t *in[KZ_MAX_LANES];
        uint8_t *hashes[KZ_MAX_LANES];
        for (size_t j = 0; j < group; j++) {
            in[j] = src + 80 * (i + j);
            hashes[j] = dst + 32 * (i + j);
        }
        kz_sha256_80_lanes(be, group, in, hashes);
        kz_sha256_32_lanes(be, group, (const uint8_t *const *)hashes, hashes);
    }
    Py_END_ALLOW_THREADS
    free(copy);
    PyBuffer_Release(&view);
    return out;
}

/* ---------- validate_batch ---------- */

/* Where each submission's extranonces sit in the arena until the arena stops moving. */
typedef struct {
    size_t en1_off, en1_len, en2_off, en2_len;
} sub_offsets;

static PyObject *get_attr_for_sub(PyObject *item, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(item, name);
    if (!v && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "submission must be a 6-tuple (extranonce1, extranonce2, ntime, nonce, "
                     "version_bits, share_target) or have those attributes; %.100s has no '%U'",
                     Py_TYPE(item)->tp_name, name);
    }
    return v;
}

static int parse_sub_fields(PyObject *const fields[6], kz_sub *sub, sub_offsets *offs,
                            arena_t *arena)
{
    if (copy_bytes_arg(fields[0], "extranonce1", 0, KZ_MAX_PART_BYTES, arena, &offs->en1_off,
                       &offs->en1_len) < 0)
        return -1;
    if (copy_bytes_arg(fields[1], "extranonce2", 0, KZ_MAX_PART_BYTES, arena, &offs->en2_off,
                       &offs->en2_len) < 0)
        return -1;
    if (u32_arg(fields[2], "ntime", &sub->ntime) < 0 || u32_arg(fields[3], "nonce", &sub->nonce) < 0 ||
        u32_arg(fields[4], "version_bits", &sub->version_bits) < 0)
        return -1;
    return target_arg(fields[5], "share_target", sub->share_target, &sub->share_target_negative);
}

/* Submission objects with __slots__ (stratum.jobs.Submission) have each field at a fixed offset; when a
 * type's six attributes are plain object slots and it keeps the generic attribute lookup, read the
 * slots directly instead of six getattr calls. Checked once per type, like result_slots(). */
static PyTypeObject *sub_type_cached;       /* strong reference */
static Py_ssize_t sub_type_offsets[6];

static int sub_slots(PyTypeObject *tp, PyObject *const names[6], Py_ssize_t offsets[6])
{
    if (tp == sub_type_cached) {
        memcpy(offsets, sub_type_offsets, sizeof sub_type_offsets);
        return 1;
    }
    if (tp->tp_getattro != PyObject_GenericGetAttr)
        return 0;
    for (int k = 0; k < 6; k++) {
        PyObject *descr = _PyType_Lookup(tp, names[k]);      /* borrowed, no Python code runs */
        if (!descr || !Py_IS_TYPE(descr, &PyMemberDescr_Type))
            return 0;
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type != Py_T_OBJECT_EX)
            return 0;
        offsets[k] = member->offset;
    }
    Py_INCREF(tp);
    Py_XSETREF(sub_type_cached, tp);
    memcpy(sub_type_offsets, offsets, sizeof sub_type_offsets);
    return 1;
}

static int parse_sub(PyObject *item, kz_sub *sub, sub_offsets *offs, arena_t *arena)
{
    if (PyTuple_Check(item)) {
        if (PyTuple_GET_SIZE(item) != 6) {
            PyErr_Format(PyExc_ValueError, "submission tuple must have 6 items, got %zd",
                         PyTuple_GET_SIZE(item));
            return -1;
        }
        return parse_sub_fields(&PyTuple_GET_ITEM(item, 0), sub, offs, arena);
    }
    /* A Submission-like object: read the attributes (`version` is the final nVersion). */
    PyObject *names[6] = {str_extranonce1, str_extranonce2, str_ntime, str_nonce, str_version,
                          str_share_target};
    PyObject *fields[6] = {NULL};
    Py_ssize_t offsets[6];
    int rc = 0;
    int slots = sub_slots(Py_TYPE(item), names, offsets);
    for (int k = 0; k < 6 && rc == 0; k++) {
        if (slots) {
            /* New references: parsing a field may run Python code (a buffer export) that could
             * reassign another slot of this object. */
            fields[k] = *(PyObject **)((char *)item + offsets[k]);
            Py_XINCREF(fields[k]);
        } else {
            fields[k] = get_attr_for_sub(item, names[k]);
        }
        if (!fields[k]) {
            if (slots)
                get_attr_for_sub(item, names[k]);     /* unset slot: raise the same TypeError */
            rc = -1;
        }
    }
    if (rc == 0)
        rc = parse_sub_fields(fields, sub, offs, arena);
    for (int k = 0; k < 6; k++)
        Py_XDECREF(fields[k]);
    return rc;
}

typedef struct {
    kz_job job;
    size_t coinb1_off, coinb1_len, coinb2_off, coinb2_len, branch_off;
} job_parse;

static int parse_job(PyObject *coinb1, PyObject *coinb2, PyObject *branch, PyObject *version,
                     PyObject *prevhash, PyObject *nbits, PyObject *network_target,
                     PyObject *version_mask, job_parse *jp, arena_t *arena)
{
    memset(jp, 0, sizeof *jp);
    jp->job.version_mask = 0xFFFFFFFFu;
    if (copy_bytes_arg(coinb1, "coinb1", 0, KZ_MAX_PART_BYTES, arena, &jp->coinb1_off,
                       &jp->coinb1_len) < 0 ||
        copy_bytes_arg(coinb2, "coinb2", 0, KZ_MAX_PART_BYTES, arena, &jp->coinb2_off,
                       &jp->coinb2_len) < 0)
        return -1;
    Py_ssize_t levels = copy_branch(branch, arena, &jp->branch_off);
    if (levels < 0)
        return -1;
    jp->job.branch_levels = (size_t)levels;
    if (u32_arg(version, "version", &jp->job.version) < 0 ||
        copy_fixed(prevhash, "prevhash", jp->job.prevhash, 32) < 0 ||
        u32_arg(nbits, "nbits", &jp->job.nbits) < 0 ||
        target_arg(network_target, "network_target", jp->job.network_target,
                   &jp->job.network_target_negative) < 0)
        return -1;
    if (version_mask && u32_arg(version_mask, "version_mask", &jp->job.version_mask) < 0)
        return -1;
    return 0;
}

/* Fast construction of result objects.
 *
 * A frozen dataclass __init__ goes through object.__setattr__ once per field (about 300 ns per
 * ShareResult, a third of the hashing time of a share). For a slots dataclass whose only fields are
 * (hash, meets_share, meets_network), with no __post_init__ and object's own __new__, the generated
 * __init__ does nothing but store the three fields, so filling the slots directly builds the same
 * object. Anything else is called normally. The check runs once per type and is cached. */
static const char *const result_fields[3] = {"hash", "meets_share", "meets_network"};
static PyObject *slot_type_cached;            /* strong reference to the last type that passed */
static Py_ssize_t slot_offsets[3];

/* 1 and the offsets if result_type can be filled slot by slot, 0 if not, -1 on error. */
static int result_slots(PyObject *result_type, Py_ssize_t offsets[3])
{
    if (result_type == slot_type_cached) {
        memcpy(offsets, slot_offsets, sizeof slot_offsets);
        return 1;
    }
    if (!PyType_Check(result_type))
        return 0;
    PyTypeObject *tp = (PyTypeObject *)result_type;
    if (tp->tp_new != PyBaseObject_Type.tp_new || tp->tp_dict == NULL)
        return 0;
    PyObject *fields = PyDict_GetItemString(tp->tp_dict, "__dataclass_fields__");   /* borrowed */
    if (!fields || !PyDict_Check(fields) || PyDict_GET_SIZE(fields) != 3 ||
        PyDict_GetItemString(tp->tp_dict, "__post_init__") != NULL)
        return 0;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    for (int k = 0; k < 3; k++) {
        if (!PyDict_Next(fields, &pos, &key, &value) || !PyUnicode_Check(key) ||
            PyUnicode_CompareWithASCIIString(key, result_fields[k]) != 0)
            return 0;
        PyObject *descr = PyDict_GetItemString(tp->tp_dict, result_fields[k]);
        if (!descr || !Py_IS_TYPE(descr, &PyMemberDescr_Type))
            return 0;
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type != Py_T_OBJECT_EX || (member->flags & Py_READONLY))
            return 0;
        offsets[k] = member->offset;
    }
    Py_INCREF(result_type);
    Py_XSETREF(slot_type_cached, result_type);
    memcpy(slot_offsets, offsets, sizeof slot_offsets);
    return 1;
}

static PyObject *make_result(PyObject *result_type, int use_slots, const Py_ssize_t offsets[3],
                             PyObject *h, PyObject *share, PyObject *network)
{
    if (result_type == NULL)
        return PyTuple_Pack(3, h, share, network);
    if (!use_slots) {
        PyObject *call_args[3] = {h, share, network};
        return PyObject_Vectorcall(result_type, call_args, 3, NULL);
    }
    PyTypeObject *tp = (PyTypeObject *)result_type;
    PyObject *obj = tp->tp_alloc(tp, 0);
    if (!obj)
        return NULL;
    PyObject *values[3] = {h, share, network};
    for (int k = 0; k < 3; k++) {
        Py_INCREF(values[k]);
        *(PyObject **)((char *)obj + offsets[k]) = values[k];
    }
    /* It holds only bytes and bools, so it can never be part of a reference cycle: keep it out of
     * the cyclic GC's lists (CPython does the same for tuples of atomic objects). Saves the
     * collector walking a thousand results per batch. */
    if (PyObject_GC_IsTracked(obj))
        PyObject_GC_UnTrack(obj);
    return obj;
}

/* Build the Python list of results: tuples, or result_type(hash, meets_share, meets_network). */
static PyObject *build_results(const kz_result *results, size_t n, PyObject *result_type)
{
    Py_ssize_t offsets[3] = {0, 0, 0};
    int use_slots = 0;
    if (result_type != NULL) {
        use_slots = result_slots(result_type, offsets);
        if (use_slots < 0)
            return NULL;
    }
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (!list)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        PyObject *h = PyBytes_FromStringAndSize((const char *)results[i].hash, 32);
        if (!h) {
            Py_DECREF(list);
            return NULL;
        }
        PyObject *r = make_result(result_type, use_slots, offsets, h,
                                  results[i].meets_share ? Py_True : Py_False,
                                  results[i].meets_network ? Py_True : Py_False);
        Py_DECREF(h);
        if (!r) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, r);
    }
    return list;
}

/* Batches up to this size keep their per-share arrays on the stack. */
#define SMALL_BATCH 16

/* validate_batch's parameters: eight that may be positional, two keyword-only. */
#define VB_NPARAMS 10
#define VB_NPOSITIONAL 8
static const char *const vb_names[VB_NPARAMS] = {"coinb1", "coinb2", "merkle_branch", "version",
                                                 "prevhash", "nbits", "network_target", "subs",
                                                 "version_mask", "result_type"};
static PyObject *vb_interned[VB_NPARAMS];

/* Vectorcall argument parsing: a one-share call is dominated by fixed costs, and the generic
 * keyword parser (dict building and lookups) was a tenth of them. Fills params[] (borrowed). */
static int parse_vb_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                         PyObject *params[VB_NPARAMS])
{
    for (int i = 0; i < VB_NPARAMS; i++)
        params[i] = NULL;
    if (nargs > VB_NPOSITIONAL) {
        PyErr_Format(PyExc_TypeError, "validate_batch() takes %d positional arguments but %zd were given",
                     VB_NPOSITIONAL, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        params[i] = args[i];
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, k);
        int found = -1;
        for (int i = 0; i < VB_NPARAMS && found < 0; i++) {
            if (name == vb_interned[i])
                found = i;
        }
        for (int i = 0; i < VB_NPARAMS && found < 0; i++) {
            int eq = PyUnicode_Compare(name, vb_interned[i]);
            if (eq == -1 && PyErr_Occurred())
                return -1;
            if (eq == 0)
                found = i;
        }
        if (found < 0) {
            PyErr_Format(PyExc_TypeError, "validate_batch() got an unexpected keyword argument %R", name);
            return -1;
        }
        if (params[found]) {
            PyErr_Format(PyExc_TypeError, "validate_batch() got multiple values for argument '%s'",
                         vb_names[found]);
            return -1;
        }
        params[found] = args[nargs + k];
    }
    for (int i = 0; i < VB_NPOSITIONAL; i++) {
        if (!params[i]) {
            PyErr_Format(PyExc_TypeError, "validate_batch() missing required argument '%s'", vb_names[i]);
            return -1;
        }
    }
    return 0;
}

static PyObject *py_validate_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *kwnames)
{
    PyObject *params[VB_NPARAMS];
    if (parse_vb_args(args, nargs, kwnames, params) < 0)
        return NULL;
    PyObject *coinb1 = params[0], *coinb2 = params[1], *branch = params[2], *version = params[3];
    PyObject *prevhash = params[4], *nbits = params[5], *network_target = params[6];
    PyObject *subs_obj = params[7], *version_mask = params[8];
    PyObject *result_type = params[9] ? params[9] : Py_None;
    if (result_type == Py_None)
        result_type = NULL;
    else if (!PyCallable_Check(result_type)) {
        PyErr_SetString(PyExc_TypeError, "result_type must be callable or None");
        return NULL;
    }

    arena_t arena = {0};
    job_parse jp;
    kz_sub subs_small[SMALL_BATCH];
    sub_offsets offs_small[SMALL_BATCH];
    kz_result results_small[SMALL_BATCH];
    kz_sub *subs = NULL;
    sub_offsets *offs = NULL;
    kz_result *results = NULL;
    PyObject *items = NULL, *out = NULL;

    if (parse_job(coinb1, coinb2, branch, version, prevhash, nbits, network_target, version_mask,
                  &jp, &arena) < 0)
        goto done;
    if (PyBytes_Check(subs_obj) || PyUnicode_Check(subs_obj)) {
        PyErr_SetString(PyExc_TypeError, "subs must be a sequence of submissions");
        goto done;
    }
    items = PySequence_Tuple(subs_obj);   /* snapshot, see copy_branch */
    if (!items)
        goto done;
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    if (n > KZ_MAX_BATCH) {
        PyErr_Format(PyExc_ValueError, "batch of %zd submissions exceeds the limit of %d", n,
                     KZ_MAX_BATCH);
        goto done;
    }
    size_t count = (size_t)n;
    if (count <= SMALL_BATCH) {
        /* One share per call is a common pattern: keep its bookkeeping on the stack. */
        subs = subs_small;
        offs = offs_small;
        results = results_small;
    } else {
        subs = calloc(count, sizeof *subs);
        offs = calloc(count, sizeof *offs);
        results = calloc(count, sizeof *results);
        if (!subs || !offs || !results) {
            PyErr_NoMemory();
            goto done;
        }
    }
    for (size_t i = 0; i < count; i++) {
        if (parse_sub(PyTuple_GET_ITEM(items, (Py_ssize_t)i), &subs[i], &offs[i], &arena) < 0)
            goto done;
    }
    /* The arena no longer moves: turn offsets into pointers. */
    const uint8_t *base = arena.data;
    for (size_t i = 0; i < count; i++) {
        subs[i].extranonce1 = base + offs[i].en1_off;
        subs[i].extranonce1_len = offs[i].en1_len;
        subs[i].extranonce2 = base + offs[i].en2_off;
        subs[i].extranonce2_len = offs[i].en2_len;
    }
    jp.job.coinb2 = base ? base + jp.coinb2_off : NULL;
    jp.job.coinb2_len = jp.coinb2_len;
    jp.job.branch = base ? base + jp.branch_off : NULL;

    const kz_backend *be = kz_active_backend();
    Py_BEGIN_ALLOW_THREADS
    kz_job_prepare(&jp.job, be, base ? base + jp.coinb1_off : NULL, jp.coinb1_len);
    kz_validate_shares(&jp.job, be, subs, count, results);
    Py_END_ALLOW_THREADS

    out = build_results(results, count, result_type);

done:
    Py_XDECREF(items);
    if (subs != subs_small)
        free(subs);
    if (offs != offs_small)
        free(offs);
    if (results != results_small)
        free(results);
    arena_free(&arena);
    return out;
}

/* ---------- backend introspection (tests and the benchmark) ---------- */

static PyObject *py_backend(PyObject *self, PyObject *unused)
{
    return PyUnicode_FromString(kz_active_backend()->name);
}

static PyObject *py_cpu_has_sha_ni(PyObject *self, PyObject *unused)
{
    return PyBool_FromLong(kz_cpu_has_shani());
}

static PyObject *py_supported_backends(PyObject *self, PyObject *unused)
{
    PyObject *names = PyList_New(0);
    if (!names)
        return NULL;
    for (const char *const *p = kz_supported_backends(); *p; p++) {
        PyObject *name = PyUnicode_FromString(*p);
        if (!name || PyList_Append(names, name) < 0) {
            Py_XDECREF(name);
            Py_DECREF(names);
            return NULL;
        }
        Py_DECREF(name);
    }
    PyObject *out = PyList_AsTuple(names);
    Py_DECREF(names);
    return out;
}

static PyObject *py_cpu_features(PyObject *self, PyObject *unused)
{
    return Py_BuildValue("{s:O,s:O,s:O}", "sha_ni", kz_cpu_has_shani() ? Py_True : Py_False,
                         "avx2", kz_cpu_has_avx2() ? Py_True : Py_False,
                         "avx512f", kz_cpu_has_avx512() ? Py_True : Py_False);
}

static PyObject *py_set_backend(PyObject *self, PyObject *arg)
{
    if (!PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "backend name must be a str");
        return NULL;
    }
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name)
        return NULL;
    PyObject *previous = PyUnicode_FromString(kz_active_backend()->name);
    if (!previous)
        return NULL;
    if (kz_select_backend(name) < 0) {
        Py_DECREF(previous);
        PyErr_Format(PyExc_ValueError, "backend %R is unknown or not supported by this CPU", arg);
        return NULL;
    }
    return previous;
}

static PyMethodDef kzhash_methods[] = {
    {"dsha256", py_dsha256, METH_O, "dsha256(data) -> bytes: SHA-256 of SHA-256, internal order."},
    {"sha256", py_sha256, METH_O, "sha256(data) -> bytes: single SHA-256."},
    {"merkle_root", py_merkle_root, METH_VARARGS,
     "merkle_root(coinbase_hash, branch) -> bytes: fold dsha256(node || b) along the branch."},
    {"hash_headers", py_hash_headers, METH_O,
     "hash_headers(headers) -> bytes: dSHA256 of each 80-byte header, 32 bytes each, GIL released."},
    {"validate_batch", (PyCFunction)(void (*)(void))py_validate_batch, METH_FASTCALL | METH_KEYWORDS,
     "validate_batch(coinb1, coinb2, merkle_branch, version, prevhash, nbits, network_target, subs,\n"
     "               *, version_mask=0xffffffff, result_type=None) -> list\n\n"
     "Rebuild and hash each submission's header with the GIL released. subs items are 6-tuples\n"
     "(extranonce1, extranonce2, ntime, nonce, version_bits, share_target) or objects with the\n"
     "attributes extranonce1, extranonce2, ntime, nonce, version, share_target. The header version\n"
     "is (version & ~version_mask) | (version_bits & version_mask). Targets: int or 32 LE bytes.\n"
     "Returns (hash, meets_share, meets_network) tuples, or result_type(...) of the same."},
    {"backend", py_backend, METH_NOARGS, "backend() -> str: the SHA-256 backend in use."},
    {"cpu_has_sha_ni", py_cpu_has_sha_ni, METH_NOARGS, "cpu_has_sha_ni() -> bool (cpuid)."},
    {"supported_backends", py_supported_backends, METH_NOARGS,
     "supported_backends() -> tuple of the backend names this CPU can run."},
    {"cpu_features", py_cpu_features, METH_NOARGS,
     "cpu_features() -> {'sha_ni': bool, 'avx2': bool, 'avx512f': bool} (cpuid + xgetbv)."},
    {"set_backend", py_set_backend, METH_O,
     "set_backend(name) -> previous name. 'auto' or one of supported_backends(): 'portable',\n"
     "'sha-ni', 'avx2', 'avx2+sha-ni', 'avx512', 'avx512+sha-ni'. For tests and benchmarks;\n"
     "not meant to be switched while another thread is hashing."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef kzhash_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pool._kzhash",
    .m_doc = "C-accelerated SHA-256d, merkle folding and batched share validation for kzpool.",
    .m_size = -1,
    .m_methods = kzhash_methods,
};

PyMODINIT_FUNC PyInit__kzhash(void)
{
    kz_sha256_init();
    str_extranonce1 = PyUnicode_InternFromString("extranonce1");
    str_extranonce2 = PyUnicode_InternFromString("extranonce2");
    str_ntime = PyUnicode_InternFromString("ntime");
    str_nonce = PyUnicode_InternFromString("nonce");
    str_version = PyUnicode_InternFromString("version");
    str_share_target = PyUnicode_InternFromString("share_target");
    if (!str_extranonce1 || !str_extranonce2 || !str_ntime || !str_nonce || !str_version ||
        !str_share_target)
        return NULL;
    for (int i = 0; i < VB_NPARAMS; i++) {
        vb_interned[i] = PyUnicode_InternFromString(vb_names[i]);
        if (!vb_interned[i])
            return NULL;
    }
    PyObject *m = PyModule_Create(&kzhash_module);
    if (!m)
        return NULL;
    if (PyModule_AddIntConstant(m, "MAX_BATCH", KZ_MAX_BATCH) < 0 ||
        PyModule_AddIntConstant(m, "MAX_BRANCH_LEVELS", KZ_MAX_BRANCH_LEVELS) < 0 ||
        PyModule_AddIntConstant(m, "MAX_PART_BYTES", KZ_MAX_PART_BYTES) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
