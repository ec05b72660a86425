"""Per-layer gradient norms for any pytree of gradients, and for Flax NNX models directly.

The question these answer (He et al. 2015 leave it open): do a deep plain net's gradients vanish? A layer's
gradient norm is ``||dL/dW_l||_2`` over all of that layer's parameters (kernel, bias, norm scale, ...):

    norm(layer) = sqrt( sum_{leaf in layer} sum_i g_i^2 )

Layers are found from the pytree paths: by default a "layer" is a leaf's path without its last component (so
``blocks/3/conv1/kernel`` and ``blocks/3/conv1/bias`` form layer ``blocks/3/conv1``). Parameters stacked for
``lax.scan``/``nnx.scan`` (leading axis = layer index) can be split back into one entry per layer with ``unstack``.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import numpy as np

Path = tuple[str, ...]
# Returns the position in a leaf's path at which to insert the layer index of its (stacked) leading axis, or
# None when the leaf is not stacked. E.g. ``lambda p: p.index("blocks") + 1 if "blocks" in p else None``.
UnstackFn = Callable[[Path], "int | None"]
GroupFn = Callable[[Path], Path]


def _key_str(k: Any) -> str | None:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            v = getattr(k, attr)
            return str(v)
    return str(k)


def tree_paths(tree: Any) -> list[tuple[Path, Any]]:
    """Flatten a pytree into ``(path, leaf)`` pairs with paths as tuples of strings.

    The trailing ``value`` attribute that NNX ``Variable`` objects add to a path is dropped, so paths read like
    module attributes (``("layers", "0", "kernel")``).
    """
    out = []
    for kp, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        path = tuple(_key_str(k) for k in kp)
        if len(kp) > 1 and isinstance(kp[-1], jax.tree_util.GetAttrKey) and kp[-1].name == "value":
            path = path[:-1]
        out.append((path, leaf))
    return out


def _group_fn(group: str | int | GroupFn) -> GroupFn:
    if callable(group):
        return group
    if group == "leaf":
        return lambda p: p
    if group == "module":
        return lambda p: p[:-1] if len(p) > 1 else p
    if isinstance(group, int) and not isinstance(group, bool):
        if group < 1:
            raise ValueError(f"group: an int keeps that many leading path components and must be >= 1, got {group}")
        return lambda p: p[:group]
    raise ValueError(f"group: expected 'module', 'leaf', an int or a callable, got {group!r}")


def _squared_sums(tree: Any, group: str | int | GroupFn, unstack: UnstackFn | None) -> dict[str, float]:
    gfn = _group_fn(group)
    sums: dict[str, float] = {}
    for path, leaf in tree_paths(tree):
        if leaf is None or not hasattr(leaf, "shape"):
            continue
        # float64 on the host: exact enough for any width, and no per-leaf device dispatch or compile.
        sq = np.square(np.asarray(leaf, dtype=np.float64))
        pos = unstack(path) if unstack is not None else None
        if pos is None:
            entries = [(gfn(path), float(np.sum(sq)))]
        else:
            if sq.ndim == 0:
                raise ValueError(f"unstack: leaf {'/'.join(path)} is a scalar and has no layer axis to split")
            per_layer = np.sum(sq.reshape(sq.shape[0], -1), axis=1)
            g = gfn(path)
            pos = min(pos, len(g))
            entries = [(g[:pos] + (str(i),) + g[pos:], float(per_layer[i])) for i in range(sq.shape[0])]
        for key, val in entries:
            k = "/".join(key)
            sums[k] = sums[k] + val if k in sums else val
    return sums


def grad_norms(
    grads: Any,
    *,
    group: str | int | GroupFn = "module",
    unstack: UnstackFn | None = None,
    relative_to: Any | None = None,
) -> dict[str, float]:
    """L2 norm of the gradient of each layer (or leaf) of a gradient pytree.

    Args:
      grads: any pytree of arrays (``jax.grad`` output, an ``nnx.State`` of gradients, a linen params dict).
      group: how leaves form layers — ``"module"`` (drop the last path component; default), ``"leaf"`` (one entry
        per array), an int ``k`` (keep the first ``k`` path components), or a callable ``path -> path``.
      unstack: for scan-stacked parameters, a callable ``path -> position | None``; a leaf for which it returns a
        position is split along its leading axis into one layer per index, the index inserted at that position
        of the layer's path.
      relative_to: optional pytree with the same structure (e.g. the parameters): return
        ``||g_layer|| / ||w_layer||`` instead, the relative size of one SGD step before the learning rate
        (``inf`` where the parameters are all zero).

    Returns:
      ``{"layers/3/conv1": 0.0123, ...}`` as Python floats, in pytree order (NNX sorts integer keys numerically).
    """
    sums = _squared_sums(grads, group, unstack)
    out = {k: float(np.sqrt(v)) for k, v in sums.items()}
    if relative_to is not None:
        ref = _squared_sums(relative_to, group, unstack)
        missing = set(out) - set(ref)
        if missing:
            raise ValueError(f"relative_to: no parameters for layers {sorted(missing)[:5]}")
        out = {k: (v / float(np.sqrt(ref[k])) if float(ref[k]) > 0 else float("inf")) for k, v in out.items()}
    return out


def param_grad_norms(
    model: Any,
    loss_fn: Callable[..., jax.Array],
    *args: Any,
    wrt: Any = None,
    group: str | int | GroupFn = "module",
    unstack: UnstackFn | None = None,
    relative: bool = False,
    **kwargs: Any,
) -> tuple[float, dict[str, float]]:
    """Loss and per-layer gradient norms of a Flax NNX model, without changing the model.

    ``loss_fn(model, *args, **kwargs) -> scalar``. Gradients are taken with respect to the variables selected by
    ``wrt`` (default ``nnx.Param``). The loss runs on a copy of the model, so BatchNorm running statistics or
    other state updated in the call are discarded: calling this is side-effect free. Put the model in the mode
    you want measured (``model.train()`` uses batch statistics) before calling.

    Returns ``(loss, {layer: ||dL/dW_layer||})`` (or the ratios to ``||W_layer||`` when ``relative=True``).
    """
    from flax import nnx  # local: the pytree function above does not need flax

    wrt = nnx.Param if wrt is None else wrt
    graphdef, params, rest = nnx.split(model, wrt, ...)

    # Array arguments are traced; anything else (flags, strings) is baked in as a constant.
    leaves, treedef = jax.tree.flatten((args, kwargs))
    is_array = [isinstance(x, (jax.Array, np.ndarray)) for x in leaves]
    arrays = [x for x, a in zip(leaves, is_array) if a]

    def pure(p, r, arrs):
        it = iter(arrs)
        a, kw = jax.tree.unflatten(treedef, [next(it) if isa else x for x, isa in zip(leaves, is_array)])
        m = nnx.merge(graphdef, p, r, copy=True)
        return loss_fn(m, *a, **kw)

    loss, grads = jax.jit(jax.value_and_grad(pure))(params, rest, arrays)
    norms = grad_norms(grads, group=group, unstack=unstack, relative_to=params if relative else None)
    return float(loss), norms


def ordered_values(norms: dict[str, float], keys: Iterable[str] | None = None) -> np.ndarray:
    """The norms as an array in the given key order (default: dict order), for plotting norm vs layer index."""
    keys = list(norms) if keys is None else list(keys)
    return np.asarray([norms[k] for k in keys], dtype=np.float64)
