"""Compile rnlib's Pallas kernels with the real sm_90 (Triton + ptxas) and TPU (Mosaic, libtpu) compilers on a
host with neither device. Entry point: ``python -m benchmarks.compile_check``."""
