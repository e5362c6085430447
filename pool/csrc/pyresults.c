/* Result objects for pool._kzhash.validate_batch; see pyresults.h. */
#include "pyresults.h"

#include <string.h>

#ifndef Py_T_OBJECT_EX          /* before 3.12 the member types live in structmember.h */
#include <structmember.h>
#define Py_T_OBJECT_EX T_OBJECT_EX
#define Py_READONLY READONLY
#endif

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
PyObject *kzpy_build_results(const kz_result *results, size_t n, PyObject *result_type)
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
