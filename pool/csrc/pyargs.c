/* Argument checking and copying for pool._kzhash; see pyargs.h. */
#include "pyargs.h"

#include <stdlib.h>
#include <string.h>

#include "share.h"

void kzpy_arena_free(kzpy_arena *a)
{
    free(a->data);
    a->data = NULL;
    a->len = a->cap = 0;
}

/* Append and return the offset, or (size_t)-1 with MemoryError set. Offsets, not pointers,
 * because a later append may move the buffer. */
size_t kzpy_arena_append(kzpy_arena *a, const void *src, size_t n)
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
int kzpy_copy_bytes(PyObject *obj, const char *what, Py_ssize_t min_len, Py_ssize_t max_len,
                          kzpy_arena *arena, size_t *offset, size_t *length)
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
        *offset = kzpy_arena_append(arena, src, (size_t)n);
        *length = (size_t)n;
        if (*offset == (size_t)-1)
            rc = -1;
    }
    if (have_view)
        PyBuffer_Release(&view);
    return rc;
}

/* Copy a bytes-like object of exactly `len` bytes into a fixed C array. */
int kzpy_copy_fixed(PyObject *obj, const char *what, uint8_t *out, Py_ssize_t len)
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
int kzpy_u32(PyObject *obj, const char *what, uint32_t *out)
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
int kzpy_target(PyObject *obj, const char *what, uint8_t out[32], uint8_t *negative)
{
    *negative = 0;
    if (!PyLong_Check(obj))
        return kzpy_copy_fixed(obj, what, out, 32);
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

/* Copy a sequence of 32-byte hashes into the arena; returns the level count or -1. */
Py_ssize_t kzpy_copy_branch(PyObject *branch, kzpy_arena *arena, size_t *offset)
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
        if (kzpy_copy_bytes(PyTuple_GET_ITEM(items, i), "merkle_branch item", 32, 32, arena, &off,
                           &len) < 0) {
            Py_DECREF(items);
            return -1;
        }
    }
    Py_DECREF(items);
    return levels;
}
