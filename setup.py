"""Builds the optional native CPU norm library (rnlib/kernels/native/_norm_cpu*.so); metadata is in pyproject.toml.

The library is loaded with ctypes (it holds XLA FFI handlers, not a Python module). ``optional=True``: without a
working C++ compiler the install still succeeds and rnlib uses its XLA backend (``rnlib.ops.backend_unavailable("native")``
says why). Portable flags only (no -march=native: the wheel may run on other CPUs); the row kernels carry their
own AVX2/AVX-512 versions, picked at run time. Editable installs build it in place (kernels/native/); after
changing the C++ rebuild with ``pip install -e .`` or ``python setup.py build_ext --inplace``.
"""
from setuptools import Extension, setup

_NATIVE = "kernels/native"

setup(
    ext_modules=[
        Extension(
            "rnlib.kernels.native._norm_cpu",
            sources=[f"{_NATIVE}/norm_cpu.cc"],
            depends=[f"{_NATIVE}/norm_rows.h"] + [f"{_NATIVE}/third_party/xla/ffi/api/{h}"
                                                  for h in ("api.h", "c_api.h", "ffi.h")],
            # -ffp-contract=off: no FMA contraction, so every instruction-set version rounds alike.
            # -isystem: the vendored XLA headers' own warnings are not ours.
            extra_compile_args=["-std=c++17", "-O3", "-g0", "-ffp-contract=off", "-Wno-psabi",
                                "-isystem", f"{_NATIVE}/third_party"],
            language="c++",
            optional=True,
        )
    ],
)
