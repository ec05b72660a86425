"""Import-time check that the installed jax and flax are a pair rnlib supports.

Reads versions with :mod:`importlib.metadata` only (no jax/flax import), so a broken pairing fails here with a
message naming the versions instead of deep inside ``import flax.nnx``.

Supported: jax >= 0.10.2 with flax >= 0.12.8; from jax 0.11.1 on, flax >= 0.12.10 (flax 0.12.8 and 0.12.9 import
names that jax 0.11.1 removed from ``jax.experimental.hijax``). pyproject.toml states the same constraints.
"""
from __future__ import annotations

import re
from importlib import metadata
from typing import Callable, Optional

MIN_JAX = (0, 10, 2)
MIN_FLAX = (0, 12, 8)
# (jax from, flax needed): flax releases older than the second cannot import flax.nnx on jax >= the first.
FLAX_FLOOR_FOR_JAX = ((0, 11, 1), (0, 12, 10))


def parse_version(text: str) -> tuple[int, ...]:
    """Leading numeric release components: ``"0.12.0.1" -> (0, 12, 0, 1)``, ``"0.11.0.dev20250101" -> (0, 11, 0)``."""
    parts = []
    for piece in text.split("."):
        m = re.match(r"\d+", piece)
        if m is None:
            break
        parts.append(int(m.group()))
        if m.end() != len(piece):
            break
    return tuple(parts)


def _fmt(v: tuple[int, ...]) -> str:
    return ".".join(map(str, v))


def problem(jax_version: Optional[str], flax_version: Optional[str]) -> Optional[str]:
    """The reason this jax/flax pair is unsupported, or None if it is supported. ``None`` = not installed."""
    if jax_version is None or flax_version is None:
        missing = " and ".join(n for n, v in (("jax", jax_version), ("flax", flax_version)) if v is None)
        return f"rnlib needs {missing} installed (pip install 'jax>={_fmt(MIN_JAX)}' 'flax>={_fmt(MIN_FLAX)}')"
    jv, fv = parse_version(jax_version), parse_version(flax_version)
    if jv < MIN_JAX:
        return f"rnlib needs jax >= {_fmt(MIN_JAX)}, found jax {jax_version}; upgrade jax and jaxlib"
    if fv < MIN_FLAX:
        return f"rnlib needs flax >= {_fmt(MIN_FLAX)}, found flax {flax_version}; upgrade flax"
    jax_from, flax_floor = FLAX_FLOOR_FOR_JAX
    if jv >= jax_from and fv < flax_floor:
        return (f"flax {flax_version} does not work with jax {jax_version}: on jax >= {_fmt(jax_from)} rnlib needs "
                f"flax >= {_fmt(flax_floor)} (older flax cannot import flax.nnx there); "
                f"pip install 'flax>={_fmt(flax_floor)}'")
    return None


def _installed(name: str, version: Callable[[str], str] = metadata.version) -> Optional[str]:
    try:
        return version(name)
    except metadata.PackageNotFoundError:
        return None


def check_versions() -> None:
    """Raise ImportError naming the versions when the installed jax/flax pair is unsupported."""
    reason = problem(_installed("jax"), _installed("flax"))
    if reason is not None:
        raise ImportError(reason)


check_versions()
