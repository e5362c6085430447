"""Build glue for the optional C extension `pool._kzhash`; everything else lives in pyproject.toml.

`optional=True` makes a failed compile (no compiler, no Python headers) a warning: the package still
installs and pool.native falls back to the pure-Python hasher, logging why at start.
"""
from setuptools import Extension, setup

KZHASH_SOURCES = [
    "pool/_kzhash.c",
    "pool/csrc/sha256.c",
    "pool/csrc/sha256_portable.c",
    "pool/csrc/sha256_shani.c",
    "pool/csrc/share.c",
]

setup(
    ext_modules=[
        Extension(
            "pool._kzhash",
            sources=KZHASH_SOURCES,
            depends=["pool/csrc/sha256.h", "pool/csrc/share.h"],
            # -O3 unrolls the rounds; SHA-NI code is enabled per function with a target attribute,
            # so no -msha here and the module still loads on CPUs without SHA extensions.
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ],
)
