"""Build glue for the optional C extension `pool._kzhash`; everything else lives in pyproject.toml.

`optional=True` makes a failed compile (no compiler, no Python headers) a warning: the package still
installs and pool.native falls back to the pure-Python hasher, logging why at start.
"""
from setuptools import Extension, setup

KZHASH_SOURCES = [
    "pool/_kzhash.c",
    "pool/csrc/pyargs.c",
    "pool/csrc/pybatch.c",
    "pool/csrc/pyresults.c",
    "pool/csrc/sha256.c",
    "pool/csrc/sha256_portable.c",
    "pool/csrc/sha256_shani.c",
    "pool/csrc/sha256_avx2.c",
    "pool/csrc/sha256_avx512.c",
    "pool/csrc/share.c",
]

setup(
    ext_modules=[
        Extension(
            "pool._kzhash",
            sources=KZHASH_SOURCES,
            depends=["pool/csrc/sha256.h", "pool/csrc/share.h", "pool/csrc/simd_group.h",
                     "pool/csrc/pyargs.h", "pool/csrc/pybatch.h", "pool/csrc/pyresults.h"],
            # -O3 unrolls the rounds. SHA-NI, AVX2 and AVX-512 code is enabled per function with
            # target attributes, so no -msha/-mavx* here: the module loads on any x86-64 (or other)
            # CPU and picks what cpuid allows at run time.
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ],
)
