/* validate_batch for pool._kzhash: submissions and job in, results out, hashing with the GIL
 * released. Split from _kzhash.c to keep each file about one thing. */
#ifndef KZ_PYBATCH_H
#define KZ_PYBATCH_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* One call handles at most this many submissions / headers: bounds the memory a single call can
 * allocate (about 100 bytes per share) and a miner-facing batch is far smaller. */
#define KZ_MAX_BATCH (1 << 20)

/* Intern the attribute and keyword names; call once from the module init. 0 or -1. */
int kzpy_batch_init(void);

PyObject *kzpy_validate_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames);

#endif
