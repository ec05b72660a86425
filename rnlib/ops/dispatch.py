"""Choose the implementation of a norm: the XLA path, the Pallas kernels or the native CPU kernel.

``impl="auto"`` takes the Pallas kernels (``rnlib.kernels``) on GPU/TPU and the native C++ kernel
(``rnlib.kernels.native``, an XLA FFI custom call) on CPU, whenever they support the shape and dtype and are
installed; otherwise XLA. ``impl="pallas"`` insists on the Pallas kernels (on CPU they run in Pallas interpret
mode, for testing); ``impl="native"`` insists on the native CPU kernel; ``impl="xla"`` uses neither.
``platform`` (None = JAX's default backend) says which lowering to trace for, so GPU/TPU lowering can be
exported from a CPU machine.
"""
from __future__ import annotations

import functools
from types import ModuleType
from typing import Any, Optional

import jax

from rnlib.ops import norm_xla

IMPLS = ("auto", "xla", "pallas", "native")
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


@functools.cache
def native_module() -> Optional[ModuleType]:
    """The native CPU kernel module, or None when it is not built/loadable here (see ``native_unavailable``)."""
    try:
        from rnlib.kernels import native
    except ImportError:  # pragma: no cover - an installation without the kernels package
        return None
    return native if native.available() else None


def native_unavailable() -> str:
    """Why :func:`native_module` is None ("" when it is available)."""
    if native_module() is not None:
        return ""
    try:
        from rnlib.kernels import native
    except ImportError as e:  # pragma: no cover
        return f"rnlib.kernels.native cannot be imported ({e})"
    return native.unavailable_reason()


def backend_name(module: ModuleType) -> str:
    """``"xla"``, ``"pallas"`` or ``"native"`` for a module :func:`choose_backend` returned."""
    return "xla" if module is norm_xla else "native" if module is native_module() else "pallas"


def backend_module(name: str) -> ModuleType:
    """Inverse of :func:`backend_name`."""
    return {"xla": norm_xla, "pallas": kernels_module(), "native": native_module()}[name]


def choose_backend(impl: str, platform: str, rows: int, width: int, dtype: Any,
                   features_in_rows: bool) -> ModuleType:
    """Return the module (``norm_xla``, ``rnlib.kernels`` or ``rnlib.kernels.native``) whose
    ``norm_fwd``/``norm_bwd`` to call."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "xla":
        return norm_xla
    if impl == "native" or (impl == "auto" and platform == "cpu"):
        native = native_module()
        ok = (native is not None and platform == "cpu" and not features_in_rows
              and native.supports(rows, width, dtype))
        if ok or impl == "auto":
            return native if ok else norm_xla
        why = (native_unavailable() if native is None else
               f"it runs on the CPU only (platform {platform!r})" if platform != "cpu" else
               "parameters vary across rows (a feature axis is not reduced)" if features_in_rows else
               f"it does not support rows={rows}, width={width}, dtype={jax.numpy.dtype(dtype).name}")
        raise ValueError(f"impl='native' cannot run here: {why}; use impl='auto' or 'xla'")
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
