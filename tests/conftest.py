"""Test-wide settings: CPU only, 8 virtual host devices for the sharding tests.

XLA_FLAGS must be set before jax is imported anywhere, hence here.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import sys  # noqa: E402

# Make tests/norm_reference.py importable as `norm_reference` from every test folder.
sys.path.insert(0, os.path.dirname(__file__))
