"""Choose the implementation of a norm: the XLA path or the Pallas kernels (``rnlib.kernels``).

``impl="auto"`` takes the kernels on GPU/TPU when they support the shape and dtype, else XLA;
``impl="pallas"`` insists on the kernels (on CPU they run in Pallas interpret mode, for testing);
``impl="xla"`` never uses them. ``platform`` (None = JAX's default backend) says which lowering to trace
for, so GPU/TPU lowering can be exported from a CPU machine.
"""
from __future__ import annotations

import functools
from types import ModuleType
from typing import Any, Optional

import jax

from rnlib.ops import norm_xla

IMPLS = ("auto", "xla", "pallas")
_PLATFORM_ALIASES = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu", "tpu": "tpu"}


def resolve_platform(platform: Optional[str]) -> str:
    """Map ``None``/"cuda"/"rocm"/... to one of "cpu", "gpu", "tpu"."""
    name = jax.default_backend() if platform is None else platform
    if name not in _PLATFORM_ALIASES:
        raise ValueError(f"platform must be None or one of {sorted(_PLATFORM_ALIASES)}, got {platform!r}")
    return _PLATFORM_ALIASES[name]


@functools.cache
def kernels_module() -> Optional[ModuleType]:
    """The kernel module, or None when it cannot be imported (e.g. a jax without Pallas)."""
    try:
        from rnlib import kernels
    except ImportError:  # pragma: no cover - depends on the installed jax
        return None
    return kernels if hasattr(kernels, "norm_fwd") else None


def choose_backend(impl: str, platform: str, rows: int, width: int, dtype: Any,
                   features_in_rows: bool) -> ModuleType:
    """Return the module (``norm_xla`` or ``rnlib.kernels``) whose ``norm_fwd``/``norm_bwd`` to call."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "xla":
        return norm_xla
    kernels = kernels_module()
    ok = (kernels is not None and not features_in_rows
          and kernels.supports(rows, width, dtype, platform))
    if impl == "pallas":
        if not ok:
            why = ("rnlib.kernels is not available in this installation" if kernels is None else
                   "parameters vary across rows (a feature axis is not reduced)" if features_in_rows else
                   f"the kernels do not support rows={rows}, width={width}, dtype={jax.numpy.dtype(dtype).name} "
                   f"on platform {platform!r}")
            raise ValueError(f"impl='pallas' cannot run here: {why}; use impl='auto' or 'xla'")
        return kernels
    return kernels if ok and platform in ("gpu", "tpu") else norm_xla
