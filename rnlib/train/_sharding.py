"""Data parallelism on jax.sharding: a 1-D mesh over all devices, the batch split along it, everything else
replicated. jit inserts the gradient all-reduce; BatchNorm statistics are those of the global batch, so the
result equals the single-device run up to floating-point reduction order. One device is the same code.

Multi-host (several processes, e.g. one per GPU node):

    jax.distributed.initialize()           # before any other JAX call; reads coordinator/env on TPU/SLURM
    dp = DataParallel()                    # mesh over jax.devices(): every process's devices
    loader = dataset.train_loader(batch_size, seed, shard=(jax.process_index(), jax.process_count()))
    batch = dp.put_batch(loader.next_batch(), global_batch_size=batch_size)

Every process draws the same global batch order (same seed) and loads (for an image folder: decodes) only its
contiguous slice of each global batch; `put_batch` assembles the global array with
`jax.make_array_from_process_local_data`. `rnlib.train.fit` does exactly this, so the CLI runs unchanged under
`jax.distributed` (start it once per process with the same arguments).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


class DataParallel:
    """A 1-D mesh ("data",) over `devices` (default: all devices of all processes)."""

    def __init__(self, devices: Sequence[jax.Device] | None = None):
        devices = list(jax.devices() if devices is None else devices)
        if not devices:
            raise ValueError("DataParallel needs at least one device")
        self.mesh = Mesh(np.asarray(devices), (DATA_AXIS,))
        self.batch_sharding = NamedSharding(self.mesh, P(DATA_AXIS))
        self.replicated = NamedSharding(self.mesh, P())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DataParallel) and other.mesh == self.mesh

    def __hash__(self) -> int:
        return hash(self.mesh)

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    def check_batch_size(self, batch_size: int, what: str = "batch size") -> None:
        if batch_size % self.num_devices:
            raise ValueError(f"{what} {batch_size} is not divisible by the {self.num_devices} devices of the data-"
                             f"parallel mesh; use a multiple of {self.num_devices} (or fewer devices)")
        if batch_size % jax.process_count():
            raise ValueError(f"{what} {batch_size} is not divisible by the {jax.process_count()} processes")

    def local_slice(self, global_batch_size: int) -> slice:
        """This process's contiguous part of a global batch (everything on a single host)."""
        self.check_batch_size(global_batch_size)
        per = global_batch_size // jax.process_count()
        i = jax.process_index()
        return slice(i * per, (i + 1) * per)

    def put_batch(self, local: dict[str, np.ndarray], global_batch_size: int | None = None) -> dict[str, jax.Array]:
        """Global arrays sharded along the batch axis from this process's slice (`local`, leading axis = batch)."""
        out = {}
        for k, v in local.items():
            gb = global_batch_size if global_batch_size is not None else v.shape[0] * jax.process_count()
            self.check_batch_size(gb)
            out[k] = jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v), (gb,) + v.shape[1:])
        return out

    def replicate(self, tree: Any) -> Any:
        """Place every leaf of `tree` replicated on the mesh."""
        return jax.device_put(tree, self.replicated)
