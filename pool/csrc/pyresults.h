/* Result objects for pool._kzhash.validate_batch: tuples, or a result type such as
 * stratum.jobs.ShareResult built as cheaply as the type allows. */
#ifndef KZ_PYRESULTS_H
#define KZ_PYRESULTS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "share.h"

/* A list of n results: (hash, meets_share, meets_network) tuples when result_type is NULL, else
 * result_type(hash, meets_share, meets_network) for each. New reference, or NULL with an error. */
PyObject *kzpy_build_results(const kz_result *results, size_t n, PyObject *result_type);

#endif
