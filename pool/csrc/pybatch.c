/* validate_batch for pool._kzhash; see pybatch.h and the module comment in ../_kzhash.c. */
#include "pybatch.h"

#include <stdlib.h>
#include <string.h>

#ifndef Py_T_OBJECT_EX          /* before 3.12 the member types live in structmember.h */
#include <structmember.h>
#define Py_T_OBJECT_EX T_OBJECT_EX
#define Py_READONLY READONLY
#endif

#include "pyargs.h"
#include "pyresults.h"
#include "sha256.h"
#include "share.h"

/* Interned attribute names for Submission-like objects. */
static PyObject *str_extranonce1, *str_extranonce2, *str_ntime, *str_nonce, *str_version,
    *str_share_target;

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
                            kzpy_arena *arena)
{
    if (kzpy_copy_bytes(fields[0], "extranonce1", 0, KZ_MAX_PART_BYTES, arena, &offs->en1_off,
                       &offs->en1_len) < 0)
        return -1;
    if (kzpy_copy_bytes(fields[1], "extranonce2", 0, KZ_MAX_PART_BYTES, arena, &offs->en2_off,
                       &offs->en2_len) < 0)
        return -1;
    if (kzpy_u32(fields[2], "ntime", &sub->ntime) < 0 || kzpy_u32(fields[3], "nonce", &sub->nonce) < 0 ||
        kzpy_u32(fields[4], "version_bits", &sub->version_bits) < 0)
        return -1;
    return kzpy_target(fields[5], "share_target", sub->share_target, &sub->share_target_negative);
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

static int parse_sub(PyObject *item, kz_sub *sub, sub_offsets *offs, kzpy_arena *arena)
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
                     PyObject *version_mask, job_parse *jp, kzpy_arena *arena)
{
    memset(jp, 0, sizeof *jp);
    jp->job.version_mask = 0xFFFFFFFFu;
    if (kzpy_copy_bytes(coinb1, "coinb1", 0, KZ_MAX_PART_BYTES, arena, &jp->coinb1_off,
                       &jp->coinb1_len) < 0 ||
        kzpy_copy_bytes(coinb2, "coinb2", 0, KZ_MAX_PART_BYTES, arena, &jp->coinb2_off,
                       &jp->coinb2_len) < 0)
        return -1;
    Py_ssize_t levels = kzpy_copy_branch(branch, arena, &jp->branch_off);
    if (levels < 0)
        return -1;
    jp->job.branch_levels = (size_t)levels;
    if (kzpy_u32(version, "version", &jp->job.version) < 0 ||
        kzpy_copy_fixed(prevhash, "prevhash", jp->job.prevhash, 32) < 0 ||
        kzpy_u32(nbits, "nbits", &jp->job.nbits) < 0 ||
        kzpy_target(network_target, "network_target", jp->job.network_target,
                   &jp->job.network_target_negative) < 0)
        return -1;
    if (version_mask && kzpy_u32(version_mask, "version_mask", &jp->job.version_mask) < 0)
        return -1;
    return 0;
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

PyObject *kzpy_validate_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
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

    kzpy_arena arena = {0};
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
    items = PySequence_Tuple(subs_obj);   /* snapshot, see kzpy_copy_branch */
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

    out = kzpy_build_results(results, count, result_type);

done:
    Py_XDECREF(items);
    if (subs != subs_small)
        free(subs);
    if (offs != offs_small)
        free(offs);
    if (results != results_small)
        free(results);
    kzpy_arena_free(&arena);
    return out;
}

int kzpy_batch_init(void)
{
    str_extranonce1 = PyUnicode_InternFromString("extranonce1");
    str_extranonce2 = PyUnicode_InternFromString("extranonce2");
    str_ntime = PyUnicode_InternFromString("ntime");
    str_nonce = PyUnicode_InternFromString("nonce");
    str_version = PyUnicode_InternFromString("version");
    str_share_target = PyUnicode_InternFromString("share_target");
    if (!str_extranonce1 || !str_extranonce2 || !str_ntime || !str_nonce || !str_version ||
        !str_share_target)
        return -1;
    for (int i = 0; i < VB_NPARAMS; i++) {
        vb_interned[i] = PyUnicode_InternFromString(vb_names[i]);
        if (!vb_interned[i])
            return -1;
    }
    return 0;
}
