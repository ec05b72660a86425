"""torch peer for the norms suite (optional: used only when torch is importable; never a dependency).

torch runs eagerly with autograd, as a torch user runs it; parameters are kept in the input dtype (a torch model
cast with ``.to(dtype)``), which lets torch use its fused CPU kernels for bf16. On a CUDA machine the tensors live on
the GPU and each timed call ends with ``torch.cuda.synchronize()``.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from benchmarks import harness


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether torch imports. Sets OMP_WAIT_POLICY=PASSIVE first (unless the user set it): torch's OpenMP threads
    otherwise spin after each op, which on a shared CPU slowed torch's own layer_norm ~9x under load and stole the
    cores from the JAX op timed next in the round-robin."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch  # noqa: F401
    except Exception:  # noqa: BLE001 -- any import failure means "not installed" here
        return False
    return True


def _device() -> str:
    available()
    import torch
    return "cuda" if harness.platform() == "gpu" and torch.cuda.is_available() else "cpu"


def _to_torch(x: Any, dtype: Any, device: str, grad: bool = False):
    import torch
    t = torch.from_numpy(np.array(jnp.asarray(x, jnp.float32))).to(device=device, dtype=dtype)
    return t.requires_grad_(grad)


def candidates(op: str, ins: tuple, cot: Any, passes: Sequence[str], eps: float) -> dict[str, tuple]:
    """{pass: (fn, args, sync)} for torch's layer_norm / rms_norm (add_norm: x + residual, then layer_norm)."""
    import torch
    import torch.nn.functional as F

    device = _device()
    tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[jnp.dtype(ins[0].dtype).name]
    width = ins[0].shape[-1]
    xs = [_to_torch(a, tdt, device, grad=True) for a in ins]
    w = (1.0 + 0.1 * torch.randn(width)).to(device=device, dtype=tdt).requires_grad_(True)
    b = (0.1 * torch.randn(width)).to(device=device, dtype=tdt).requires_grad_(True)
    cots = [_to_torch(c, tdt, device) for c in (cot if isinstance(cot, tuple) else (cot,))]
    params = [w] if op == "rms_norm" else [w, b]

    def forward():
        if op == "layer_norm":
            return (F.layer_norm(xs[0], (width,), w, b, eps),)
        if op == "rms_norm":
            return (F.rms_norm(xs[0], (width,), w, eps),)
        h = xs[0] + xs[1]
        return F.layer_norm(h, (width,), w, b, eps), h

    def fwd():
        with torch.no_grad():
            return forward()

    def fwd_bwd():
        outs = forward()
        return outs, torch.autograd.grad(outs, xs + params, cots)

    sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda _: None)
    out: dict[str, tuple] = {}
    if "fwd" in passes:
        out["fwd"] = (fwd, (), sync)
    if "bwd" in passes:
        outs = forward()  # graph kept alive by the closure; only the backward is timed
        out["bwd"] = (lambda: torch.autograd.grad(outs, xs + params, cots, retain_graph=True), (), sync)
    if "fwd+bwd" in passes:
        out["fwd+bwd"] = (fwd_bwd, (), sync)
    return out
