"""The norm backends behind one small interface, their registry, and the choice among them.

A backend computes the 2-D forward and backward of :mod:`rnlib.ops._norm_math` (same saved statistics):

* ``"xla"``: those plain maths; every platform, every float dtype. The base and the reference.
* ``"native"``: the C++ CPU kernel (``rnlib.kernels.native``, an XLA FFI call); float32/bfloat16/float16.
* ``"pallas"``: the fused Pallas kernels (``rnlib.kernels``): Triton on GPU, Mosaic on TPU, interpret mode on CPU.

``impl="auto"`` takes the first backend of :data:`AUTO_ORDER` for the platform that can run the call, so it
never raises for a call XLA can serve; a named ``impl`` runs that backend or raises a ``ValueError`` saying why
it cannot. To add a backend: implement :class:`NormBackend`, add it to :data:`BACKENDS` (and to
:data:`AUTO_ORDER` if ``"auto"`` should pick it), and run the backend-parametrised tests in ``tests/ops``.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from rnlib.ops import _norm_math

Array = jax.Array

IMPLS = ("auto", "xla", "native", "pallas")
_KERNEL_DTYPES = frozenset(np.dtype(d) for d in (jnp.float32, jnp.bfloat16, jnp.float16))


@dataclass(frozen=True)
class NormSpec:
    """Everything static about one 2-D norm call (hashable: the ``custom_vjp``'s non-differentiable argument).

    ``out_dtype`` is the dtype of ``y`` as the backend returns it; ``residual_dtype`` the stored dtype of the new
    residual ``h = x + residual`` (None without a residual); ``with_stats``: the caller also needs the row
    statistics (the stats-reinjecting LN), which only the XLA backend returns.
    """

    rows: int
    width: int
    rms: bool
    epsilon: float
    x_dtype: np.dtype
    out_dtype: np.dtype
    platform: str                                # "cpu" | "gpu" | "tpu"
    scale_dtype: Optional[np.dtype] = None       # None: no scale
    bias_dtype: Optional[np.dtype] = None        # None: no bias
    residual_in_dtype: Optional[np.dtype] = None  # the incoming residual's dtype (None: no residual)
    residual_dtype: Optional[np.dtype] = None
    params_in_rows: bool = False                 # scale/bias vary over rows: applied outside the backend
    with_stats: bool = False

    @property
    def dtypes(self) -> tuple[np.dtype, ...]:
        """Every array dtype a backend reads or writes (besides the float32/64 statistics)."""
        return tuple(d for d in (self.x_dtype, self.out_dtype, self.scale_dtype, self.bias_dtype,
                                 self.residual_in_dtype, self.residual_dtype) if d is not None)


class NormBackend(Protocol):
    """What a norm backend provides; ``rnlib.ops._norm_vjp`` owns differentiation for all of them."""

    name: str

    def why_unsupported(self, spec: NormSpec) -> str:
        """"" if this backend can run ``spec`` here, else the reason (shown by ``impl=<name>`` errors)."""

    def forward(self, spec: NormSpec, x: Array, residual: Optional[Array], scale: Optional[Array],
                bias: Optional[Array]) -> tuple[Array, Optional[Array], Array, Array]:
        """``(y, h, mean, rstd)`` exactly as :func:`rnlib.ops._norm_math.forward`."""

    def backward(self, spec: NormSpec, dy: Array, h: Array, mean: Array, rstd: Array, scale: Optional[Array],
                 dh: Optional[Array], dx_dtype: Any) -> tuple[Array, Optional[Array], Optional[Array]]:
        """``(dx, dscale, dbias)`` exactly as :func:`rnlib.ops._norm_math.backward`."""


class XlaBackend:
    """The plain maths of :mod:`rnlib.ops._norm_math`."""

    name = "xla"

    def why_unsupported(self, spec: NormSpec) -> str:
        return ""

    def forward(self, spec, x, residual, scale, bias):
        return _norm_math.forward(x, residual, scale, bias, epsilon=spec.epsilon, rms=spec.rms,
                                  out_dtype=spec.out_dtype, residual_dtype=spec.residual_dtype)

    def backward(self, spec, dy, h, mean, rstd, scale, dh, dx_dtype):
        return _norm_math.backward(dy, h, mean, rstd, scale, dh, rms=spec.rms,
                                   has_bias=spec.bias_dtype is not None, dx_dtype=dx_dtype)


def _kernel_reason(spec: NormSpec) -> str:
    """What no fused kernel takes: float64 anywhere, per-row parameters, the row statistics as outputs."""
    bad = sorted({d.name for d in spec.dtypes if d not in _KERNEL_DTYPES})
    if bad:
        return f"the kernels take float32/bfloat16/float16 operands only, got {', '.join(bad)}"
    if spec.params_in_rows:
        return "parameters vary across rows (a feature axis is not reduced)"
    if spec.with_stats:
        return "layer_norm_with_stats has no fused kernel"
    return ""


class NativeBackend:
    """The C++ CPU kernel, ``rnlib.kernels.native``."""

    name = "native"

    @functools.cached_property
    def _module(self):
        from rnlib.kernels import native
        return native

    def unavailable(self) -> str:
        """Why the compiled library cannot be used here ("" when it can)."""
        return self._module.unavailable_reason()

    def why_unsupported(self, spec: NormSpec) -> str:
        if spec.platform != "cpu":
            return f"it runs on the CPU only (platform {spec.platform!r})"
        return self.unavailable() or _kernel_reason(spec)

    def forward(self, spec, x, residual, scale, bias):
        return self._module.norm_fwd(x, residual, scale, bias, epsilon=spec.epsilon, rms=spec.rms,
                                     out_dtype=spec.out_dtype, residual_dtype=spec.residual_dtype)

    def backward(self, spec, dy, h, mean, rstd, scale, dh, dx_dtype):
        return self._module.norm_bwd(dy, h, mean, rstd, scale, dh, rms=spec.rms,
                                     has_bias=spec.bias_dtype is not None, dx_dtype=dx_dtype)


class PallasBackend:
    """The fused Pallas kernels, ``rnlib.kernels`` (interpret mode on CPU: for tests, ~50x slower)."""

    name = "pallas"

    @functools.cached_property
    def _module(self):
        from rnlib import kernels
        return kernels

    def why_unsupported(self, spec: NormSpec) -> str:
        reason = _kernel_reason(spec)
        if reason:
            return reason
        if not self._module.supports(spec.rows, spec.width, spec.x_dtype, spec.platform):
            return (f"the kernels do not support rows={spec.rows}, width={spec.width}, "
                    f"dtype={spec.x_dtype.name} on platform {spec.platform!r}")
        return ""

    def forward(self, spec, x, residual, scale, bias):
        return self._module.norm_fwd(x, residual, scale, bias, epsilon=spec.epsilon, rms=spec.rms,
                                     out_dtype=spec.out_dtype, residual_dtype=spec.residual_dtype,
                                     platform=spec.platform)

    def backward(self, spec, dy, h, mean, rstd, scale, dh, dx_dtype):
        return self._module.norm_bwd(dy, h, mean, rstd, scale, dh, rms=spec.rms,
                                     has_bias=spec.bias_dtype is not None, dx_dtype=dx_dtype,
                                     platform=spec.platform)


BACKENDS: dict[str, NormBackend] = {"xla": XlaBackend(), "native": NativeBackend(), "pallas": PallasBackend()}
# What impl="auto" tries, in order, per platform (XLA last: it runs everything).
AUTO_ORDER = {"cpu": ("native", "xla"), "gpu": ("pallas", "xla"), "tpu": ("pallas", "xla")}


_warned_interpret = False


def choose(impl: str, spec: NormSpec) -> str:
    """The name of the backend that runs ``spec`` for ``impl`` (validated by the caller).

    Called from the public norm functions' shared body, so ``stacklevel=4`` points a warning at the user's call.
    """
    global _warned_interpret
    if impl != "auto":
        reason = BACKENDS[impl].why_unsupported(spec)
        if reason:
            raise ValueError(f"impl={impl!r} cannot run this call: {reason}; use impl='auto' or 'xla'")
        if impl == "pallas" and spec.platform == "cpu" and not _warned_interpret:
            _warned_interpret = True
            warnings.warn("impl='pallas' on CPU runs the kernels in Pallas interpret mode (for testing; about 50x "
                          "slower than impl='auto'); this is said once per process", RuntimeWarning, stacklevel=4)
        return impl
    return next(name for name in AUTO_ORDER[spec.platform] if not BACKENDS[name].why_unsupported(spec))


def backend_unavailable(name: str) -> str:
    """Why backend ``name`` ("native" or "pallas") cannot be used in this installation; "" when it can.

    For "native": the compiled C++ library is missing, stale or disabled (``RNLIB_DISABLE_NATIVE=1``).
    """
    if name not in BACKENDS or name == "xla":
        raise ValueError(f"name must be 'native' or 'pallas', got {name!r}")
    try:
        if name == "native":
            return BACKENDS["native"].unavailable()
        BACKENDS["pallas"]._module  # noqa: B018 - importing is the check
    except ImportError as e:  # pragma: no cover - depends on the installation
        return f"rnlib.kernels cannot be imported here ({e})"
    return ""
