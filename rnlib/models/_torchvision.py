"""torchvision ResNet weights <-> rnlib ImageNet ResNets (``from_torchvision`` / ``to_torchvision``).

torchvision's ``resnet18/34/50/101/152`` and rnlib's ``imagenet_resnet(depth)`` are the same network (v1.5
bottleneck, 1x1 projection + BatchNorm shortcut on a shape change, BatchNorm epsilon 1e-5, symmetric k//2 padding,
3x3/2 max-pool with padding 1), so a state dict maps one to one:

  torchvision key                          rnlib state (``nnx.to_pure_dict(nnx.state(model))``)
  conv1.weight (O, I, kh, kw)              stem.kernel (kh, kw, I, O)
  bn1.weight / bias                        stem.norm_params.scale / bias
  bn1.running_mean / running_var           stem.batch_stats.mean / var
  layer{s}.0.conv{i}.weight, .bn{i}.*      heads[s-1].params.conv{i}.kernel, .norm{i}.* (+ batch_stats.norm{i}.*)
  layer{s}.0.downsample.0 / .1             heads[s-1] proj_conv / proj_norm
  layer{s}.{j}.*, j >= 1                   stacks[s-1] ... [j-1] (identical blocks, stacked on a leading axis)
  fc.weight (C, F), fc.bias                head.kernel (F, C) (transposed), head.bias

``num_batches_tracked`` (torch counts BatchNorm updates; it only matters for ``momentum=None``) is accepted and
ignored on the way in and written as 0 on the way out. Values may be torch tensors or NumPy/JAX arrays; torch is
imported only to hand back torch tensors, never to read them.
"""
from __future__ import annotations

import re
from typing import Any, Iterator, Mapping

import jax
import numpy as np
from flax import nnx

from rnlib.models._imagenet import IMAGENET_LAYOUTS, imagenet_resnet
from rnlib.models._resnet import ResNet

ARCHS = tuple(f"resnet{d}" for d in IMAGENET_LAYOUTS)

# (torchvision key, path into the pure state dict, index on the stacked axis or None, how the value is laid out)
_Entry = tuple[str, tuple[Any, ...], "int | None", str]


def _depth(arch: str) -> int:
    m = re.fullmatch(r"resnet(\d+)", str(arch).strip().lower().replace("-", "").replace("_", ""))
    if m is None or int(m.group(1)) not in IMAGENET_LAYOUTS:
        raise ValueError(f"torchvision ResNet: unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    return int(m.group(1))


def _norm_entries(tv: str, params: tuple, stats: tuple, index: int | None) -> Iterator[_Entry]:
    yield f"{tv}.weight", (*params, "scale"), index, "vector"
    yield f"{tv}.bias", (*params, "bias"), index, "vector"
    yield f"{tv}.running_mean", (*stats, "mean"), index, "vector"
    yield f"{tv}.running_var", (*stats, "var"), index, "vector"


def _block_entries(prefix: str, root: tuple, index: int | None, convs: int, projects: bool) -> Iterator[_Entry]:
    for i in range(1, convs + 1):
        yield f"{prefix}.conv{i}.weight", (*root, "params", f"conv{i}", "kernel"), index, "conv"
        yield from _norm_entries(f"{prefix}.bn{i}", (*root, "params", f"norm{i}"), (*root, "batch_stats", f"norm{i}"),
                                 index)
    if projects:
        yield f"{prefix}.downsample.0.weight", (*root, "params", "proj_conv", "kernel"), index, "conv"
        yield from _norm_entries(f"{prefix}.downsample.1", (*root, "params", "proj_norm"),
                                 (*root, "batch_stats", "proj_norm"), index)


def _entries(depth: int) -> list[_Entry]:
    """Every torchvision state-dict entry of ResNet-``depth`` (except num_batches_tracked), in torchvision's order."""
    kind, sizes = IMAGENET_LAYOUTS[depth]
    convs = 2 if kind == "basic" else 3
    out: list[_Entry] = [("conv1.weight", ("stem", "kernel"), None, "conv")]
    out += _norm_entries("bn1", ("stem", "norm_params"), ("stem", "batch_stats"), None)
    for s, n in enumerate(sizes):
        # torchvision projects in every first block of a bottleneck net (64 -> 256 in layer1), in stages 2-4 of a
        # basic one: exactly where rnlib's shortcut "B" does (a change of stride or width).
        projects = s > 0 or kind == "bottleneck"
        out += _block_entries(f"layer{s + 1}.0", ("heads", s), None, convs, projects)
        for j in range(1, n):
            out += _block_entries(f"layer{s + 1}.{j}", ("stacks", s), j - 1, convs, False)
    out += [("fc.weight", ("head", "kernel"), None, "linear"), ("fc.bias", ("head", "bias"), None, "vector")]
    return out


def _torch_layout(entry: _Entry, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The torchvision shape of one entry given the rnlib leaf's shape (without the stacked axis)."""
    kind = entry[3]
    if kind == "conv":  # HWIO -> OIHW
        return (shape[3], shape[2], shape[0], shape[1])
    if kind == "linear":  # (in, out) -> (out, in)
        return (shape[1], shape[0])
    return tuple(shape)


def _to_numpy(value: Any, key: str) -> np.ndarray:
    """A NumPy copy of a torch tensor (without importing torch), NumPy or JAX array."""
    if type(value).__module__.split(".")[0] == "torch":
        t = value.detach().cpu()
        if str(t.dtype) in ("torch.bfloat16", "torch.float16"):  # NumPy has no bfloat16: widen first
            t = t.float()
        return t.numpy().copy()
    try:
        return np.array(value)
    except Exception as e:  # noqa: BLE001 -- say which entry could not be read
        raise TypeError(f"from_torchvision: state_dict[{key!r}] is a {type(value).__name__}, not an array") from e


def _get(tree: Any, path: tuple) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def _set(tree: Any, path: tuple, value: Any) -> None:
    for p in path[:-1]:
        tree = tree[p]
    tree[path[-1]] = value


def _check_keys(given: list[str], entries: list[_Entry], arch: str) -> None:
    expected = [e[0] for e in entries]
    expected_set = set(expected)
    for k in expected:
        if k not in given:
            raise KeyError(f"from_torchvision({arch}): missing key {k!r} (the state dict holds {len(given)} entries; "
                           f"is it a torchvision {arch}?)")
    for k in given:
        if k not in expected_set and not k.endswith("num_batches_tracked"):
            raise KeyError(f"from_torchvision({arch}): unexpected key {k!r} (not in a torchvision {arch}; is the "
                           "state dict from another architecture, or wrapped, e.g. 'module.' or 'model.' prefixes?)")


def from_torchvision(state_dict: Mapping[str, Any], arch: str, **kw: Any) -> ResNet:
    """An rnlib ImageNet ResNet (NNX, eval mode) holding the weights of a torchvision ``resnet18/34/50/101/152``.

    ``state_dict``: ``torchvision_model.state_dict()`` (torch tensors) or the same keys with NumPy/JAX arrays.
    ``arch``: "resnet18" ... "resnet152". The class count comes from ``fc.weight``. ``kw`` goes to
    ``imagenet_resnet`` (e.g. ``scan=False``, ``dtype=jnp.bfloat16``; the layout options must stay torchvision's).
    Inputs: NHWC (N, H, W, 3) where torchvision takes NCHW, with the same normalisation. The eval-mode logits equal
    torchvision's up to float32 rounding; ``model.train()`` switches BatchNorm to batch statistics to fine-tune.

    Raises KeyError naming the first missing or unexpected key and ValueError naming a key whose shape differs
    from the architecture's (both say which arch was expected).
    """
    depth = _depth(arch)
    arch = f"resnet{depth}"
    given = list(state_dict.keys())
    entries = _entries(depth)
    _check_keys(given, entries, arch)
    fc = _to_numpy(state_dict["fc.weight"], "fc.weight")
    if fc.ndim != 2:
        raise ValueError(f"from_torchvision({arch}): fc.weight has shape {tuple(fc.shape)}, expected (classes, features)")
    for bad in ("plain", "preact", "norm", "shortcut"):
        if bad in kw:
            raise ValueError(f"from_torchvision: {bad}= changes the architecture away from torchvision's")
    abstract = nnx.eval_shape(lambda: imagenet_resnet(depth, num_classes=fc.shape[0], rngs=nnx.Rngs(0), **kw))
    graphdef, state = nnx.split(abstract)
    pure = nnx.to_pure_dict(state)

    stacked: dict[tuple, list] = {}
    covered = set()
    for entry in entries:
        key, path, index, _ = entry
        leaf = _get(pure, path)
        shape = tuple(leaf.shape[1:] if index is not None else leaf.shape)
        want = _torch_layout(entry, shape)
        value = _to_numpy(state_dict[key], key)
        if tuple(value.shape) != want:
            raise ValueError(f"from_torchvision({arch}): {key!r} has shape {tuple(value.shape)}, a torchvision "
                             f"{arch} (with {fc.shape[0]} classes) has {want}")
        if entry[3] == "conv":
            value = value.transpose(2, 3, 1, 0)
        elif entry[3] == "linear":
            value = value.T
        value = np.ascontiguousarray(value, dtype=leaf.dtype)
        covered.add(path)
        if index is None:
            _set(pure, path, value)
        else:
            stacked.setdefault(path, []).append(value)
    for path, values in stacked.items():
        _set(pure, path, np.stack(values))
    missed = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(pure)[0]
              if tuple(getattr(k, "key", getattr(k, "idx", k)) for k in p) not in covered]
    if missed:  # only if rnlib's ResNet gained state this mapping does not know about
        raise ValueError(f"from_torchvision({arch}): no torchvision entry for rnlib state {missed[0]}")
    nnx.replace_by_pure_dict(state, jax.tree.map(jax.numpy.asarray, pure))
    model = nnx.merge(graphdef, state)
    model.eval()
    return model


def to_torchvision(model: ResNet, *, tensors: str = "numpy") -> dict[str, Any]:
    """The torchvision state dict (keys in torchvision's order) of an rnlib ImageNet ResNet built with
    torchvision's layout (``imagenet_resnet(depth)`` defaults: post-activation, shortcut "B", BatchNorm).

    ``tensors``: "numpy" (float32 arrays) or "torch" (CPU tensors, for ``load_state_dict``; imports torch).
    ``from_torchvision(to_torchvision(m), arch)`` reproduces m's parameters and statistics bit for bit.
    """
    if tensors not in ("numpy", "torch"):
        raise ValueError(f"to_torchvision: tensors={tensors!r}, expected 'numpy' or 'torch'")
    m = re.fullmatch(r"imagenet_resnet(\d+)", getattr(model, "name", ""))
    if not isinstance(model, ResNet) or m is None or int(m.group(1)) not in IMAGENET_LAYOUTS:
        raise ValueError(f"to_torchvision: expected an rnlib ImageNet ResNet (imagenet_resnet / build('resnet50')), "
                         f"got {getattr(model, 'name', type(model).__name__)!r}")
    for head in model.heads:
        s = head.spec
        if (s.order, s.shortcut, s.norm, s.branch_scale) != ("post", "B", "batch", False):
            raise ValueError(f"to_torchvision: {model.name} uses order={s.order!r}, shortcut={s.shortcut!r}, "
                             f"norm={s.norm!r}, branch_scale={s.branch_scale}; torchvision's layout is post, 'B', "
                             "'batch', no branch scale")
    depth = int(m.group(1))
    pure = nnx.to_pure_dict(nnx.state(model))
    out: dict[str, Any] = {}
    for entry in _entries(depth):
        key, path, index, kind = entry
        value = np.asarray(jax.device_get(_get(pure, path)))
        if index is not None:
            value = value[index]
        if kind == "conv":
            value = value.transpose(3, 2, 0, 1)
        elif kind == "linear":
            value = value.T
        out[key] = np.array(value, order="C")  # a writable copy (device_get may hand back read-only memory)
        if key.endswith("running_var"):
            out[key[: -len("running_var")] + "num_batches_tracked"] = np.asarray(0, np.int64)
    if tensors == "torch":
        import torch
        out = {k: torch.from_numpy(v) for k, v in out.items()}
    return out
