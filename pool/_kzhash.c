/* pool._kzhash: C-accelerated double SHA-256, merkle folding and batched share validation.
 *
 * Python-facing layer only: it checks every argument (type, length, range), copies what it needs
 * into C memory while it holds the GIL, then hashes with the GIL released (csrc/share.c) and builds
 * the results. Bad input raises TypeError or ValueError; nothing is read outside a checked buffer.
 * Argument conversion lives in csrc/pyargs.c, validate_batch in csrc/pybatch.c.
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

#include "csrc/pyargs.h"
#include "csrc/pybatch.h"
#include "csrc/sha256.h"
#include "csrc/share.h"

/* Above this many bytes dsha256() releases the GIL; below it the release costs more than it frees. */
#define KZ_NOGIL_BYTES 65536

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

static PyObject *py_merkle_root(PyObject *self, PyObject *args)
{
    PyObject *coinbase_hash_obj, *branch_obj;
    if (!PyArg_ParseTuple(args, "OO:merkle_root", &coinbase_hash_obj, &branch_obj))
        return NULL;
    uint8_t node[32];
    kzpy_arena arena = {0};
    size_t offset = 0;
    if (kzpy_copy_fixed(coinbase_hash_obj, "coinbase_hash", node, 32) < 0)
        return NULL;
    Py_ssize_t levels = kzpy_copy_branch(branch_obj, &arena, &offset);
    if (levels < 0) {
        kzpy_arena_free(&arena);
        return NULL;
    }
    kz_merkle_root(kz_active_backend(), node, arena.data ? arena.data + offset : NULL,
                   (size_t)levels, node);
    kzpy_arena_free(&arena);
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
    {"validate_batch", (PyCFunction)(void (*)(void))kzpy_validate_batch, METH_FASTCALL | METH_KEYWORDS,
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
    if (kzpy_batch_init() < 0)
        return NULL;
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
