"""Builds the optional native CPU norm library (rnlib/kernels/native/_norm_cpu*.so); metadata is in pyproject.toml.

The library is loaded with ctypes (it holds XLA FFI handlers, not a Python module). ``optional=True``: without a
working C++ compiler the install still succeeds and rnlib uses its XLA backend (``rnlib.kernels.native.available()``
is False). Portable flags only (no -march=native): the wheel may run on other CPUs.
"""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "rnlib.kernels.native._norm_cpu",
            sources=["kernels/native/norm_cpu.cc"],
            depends=["kernels/native/norm_rows.h", "kernels/native/third_party/xla/ffi/api/api.h",
                     "kernels/native/third_party/xla/ffi/api/c_api.h",
                     "kernels/native/third_party/xla/ffi/api/ffi.h"],
            # -isystem: the vendored XLA headers' own warnings are not ours.
            extra_compile_args=["-std=c++17", "-O3", "-ffp-contract=off", "-Wno-psabi", "-isystem", "kernels/native/third_party"],
            language="c++",
            optional=True,
        )
    ],
)
