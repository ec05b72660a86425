"""The platform names rnlib accepts, in one table (used by rnlib.kernels and rnlib.ops).

A platform is where a call is lowered for: ``"cpu"``, ``"gpu"`` or ``"tpu"``; ``"cuda"`` and ``"rocm"`` are
accepted for ``"gpu"``. ``None`` means JAX's default backend.
"""
from __future__ import annotations

PLATFORMS = ("cpu", "gpu", "tpu")
_ALIASES = {"cuda": "gpu", "rocm": "gpu"}


def canonical(platform: str, extra: tuple[str, ...] = ()) -> str:
    """``platform`` as one of :data:`PLATFORMS` (or of ``extra``, the caller's own modes); ValueError otherwise."""
    name = str(platform).lower()
    name = _ALIASES.get(name, name)
    if name not in PLATFORMS + tuple(extra):
        raise ValueError(f"platform must be None or one of {PLATFORMS + tuple(extra)} (or cuda/rocm), "
                         f"got {platform!r}")
    return name


def resolve(platform: str | None) -> str:
    """:func:`canonical` of ``platform``, with ``None`` meaning ``jax.default_backend()``."""
    if platform is None:
        import jax
        platform = jax.default_backend()
    return canonical(platform)
