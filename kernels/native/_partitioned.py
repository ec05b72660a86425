"""Sharding and vmap rules for the native FFI calls.

Left alone, XLA replicates a custom call: sharded inputs are gathered and every device computes everything.
``custom_partitioning`` tells the partitioner that rows (and vmap batch dimensions) are independent: each device
runs the kernel on its own rows; only the width must be whole (``need_replication``), and per-feature sums
(dscale/dbias) are ``psum``-ed over the mesh axes the rows are split on. ``custom_partitioning`` has no vmap
rule of its own, so ``custom_vmap`` adds one: broadcast the unbatched operands and call again with a leading
batch dimension, which the handlers take as it is.

Operand/result kinds: ``"rw"`` (..., R, W), ``"r"`` (..., R), ``"w"`` (..., W).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

_FACTORS = {"rw": "... r w", "r": "... r", "w": "... w"}


def _mesh_axes(entry) -> tuple:
    return () if entry is None else tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _spec_maker(mesh, lead_sharding, ndim: int):
    """Shardings for every kind from the (..., R, W) lead operand's: its batch and row axes, width replicated."""
    spec = tuple(getattr(lead_sharding, "spec", ())) + (None,) * ndim
    lead, row = spec[:ndim - 2], spec[ndim - 2]
    specs = {"rw": PartitionSpec(*lead, row, None), "r": PartitionSpec(*lead, row), "w": PartitionSpec(*lead, None)}
    return (lambda kind: NamedSharding(mesh, specs[kind])), _mesh_axes(row)


@functools.lru_cache(maxsize=None)
def partitioned(call: Callable, cfg, kinds: tuple, out_kinds: tuple, reduced: tuple) -> Callable:
    """``call(cfg, *arrays) -> tuple`` as a row-partitioned, vmappable function of the arrays.

    ``kinds[0]`` must be ``"rw"`` (its sharding decides the others); ``reduced[i]``: result ``i`` sums over rows.
    """
    def local(*args):
        return tuple(call(cfg, *args))

    def partition(mesh, arg_shapes, result_shape):
        make, row_axes = _spec_maker(mesh, arg_shapes[0].sharding, len(arg_shapes[0].shape))

        def lower(*args):
            outs = local(*args)
            if not row_axes:
                return outs
            return tuple(jax.lax.psum(o, row_axes) if r else o for o, r in zip(outs, reduced))

        return mesh, lower, tuple(make(k) for k in out_kinds), tuple(make(k) for k in kinds)

    def infer(mesh, arg_shapes, result_shape):
        make, _ = _spec_maker(mesh, arg_shapes[0].sharding, len(arg_shapes[0].shape))
        return tuple(make(k) for k in out_kinds)

    part = custom_partitioning(local)
    rule = ", ".join(_FACTORS[k] for k in kinds) + " -> " + ", ".join(_FACTORS[k] for k in out_kinds)
    part.def_partition(partition=partition, infer_sharding_from_operands=infer, sharding_rule=rule,
                       need_replication_factors=("w",))

    batched = jax.custom_batching.custom_vmap(lambda *args: part(*args))

    @batched.def_vmap
    def _vmap_rule(axis_size, in_batched, *args):
        args = [a if b else jnp.broadcast_to(a, (axis_size,) + a.shape) for a, b in zip(args, in_batched)]
        return tuple(batched(*args)), (True,) * len(out_kinds)

    return batched
