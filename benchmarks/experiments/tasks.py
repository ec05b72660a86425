"""Seeded synthetic tasks whose label lives in a layer's per-example statistics (experiment 3).

* Card counting: the first ``length`` cards of a freshly shuffled shoe of ``num_decks`` decks; predict the running
  Hi-Lo count after each card (2-6 count +1, 7-9 count 0, 10/J/Q/K/A count -1). After sum-pooling per-card
  embeddings the count is proportional to the pooled vector's overall size (its mean/spread over features), which
  a LayerNorm divides away.
* Edge density: grey images made of vertical (or, for half the images, horizontal) step edges at ``k`` distinct
  positions, ``k`` uniform in ``[0, max_edges]``; predict ``k``. An edge detector's response has a per-example
  variance that grows with ``k``.

Both are pure NumPy functions of a seed: the same seed gives the same data on every machine.
"""
from __future__ import annotations

import numpy as np

RANKS = ("2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K", "A")
HI_LO = np.array([1, 1, 1, 1, 1, 0, 0, 0, -1, -1, -1, -1, -1], dtype=np.int32)  # indexed by rank 0..12


def card_counting(seed: int, num_examples: int, *, length: int = 32, num_decks: int = 6) -> dict[str, np.ndarray]:
    """Card-counting sequences.

    Returns:
      ``{"ranks": int32 (N, T) in 0..12, "cards": float32 one-hot (N, T, 13), "count": float32 (N, T)}`` where
      ``count[n, t] = sum_{i <= t} HI_LO[ranks[n, i]]`` (the running count after card ``t``).
    """
    if not 1 <= length <= 52 * num_decks:
        raise ValueError(f"length: must be in [1, {52 * num_decks}] for a {num_decks}-deck shoe, got {length}")
    rng = np.random.default_rng(seed)
    shoe = np.tile(np.repeat(np.arange(13, dtype=np.int32), 4), num_decks)  # 4 suits per rank per deck
    keys = rng.random((num_examples, shoe.size))
    ranks = shoe[np.argsort(keys, axis=1)[:, :length]]  # a uniformly random ordered draw without replacement
    cards = np.eye(13, dtype=np.float32)[ranks]
    count = np.cumsum(HI_LO[ranks], axis=1).astype(np.float32)
    return {"ranks": ranks, "cards": cards, "count": count}


def edge_density(seed: int, num_examples: int, *, size: int = 16, max_edges: int = 8,
                 noise: float = 0.05) -> dict[str, np.ndarray]:
    """Step-edge images.

    Each image is constant along one axis (vertical edges; transposed for a random half of the images) and
    piecewise constant along the other, with ``k`` jumps at distinct positions ``1..size-1``; each jump has a
    random sign and a magnitude uniform in ``[0.5, 1.5]``; the starting level is uniform in ``[-1, 1]``. Gaussian
    pixel noise of std ``noise`` is added last (it never creates or removes a jump of >= 0.5).

    Returns:
      ``{"image": float32 (N, size, size, 1), "edges": float32 (N,) the number k, "clean": float32 (N, size,
      size) the noise-free images}``.
    """
    if not 0 <= max_edges <= size - 1:
        raise ValueError(f"max_edges: must be in [0, {size - 1}] for size {size}, got {max_edges}")
    rng = np.random.default_rng(seed)
    k = rng.integers(0, max_edges + 1, size=num_examples)
    steps = np.zeros((num_examples, size), np.float32)
    for n in range(num_examples):
        pos = rng.choice(np.arange(1, size), size=k[n], replace=False)
        steps[n, pos] = rng.choice([-1.0, 1.0], size=k[n]) * rng.uniform(0.5, 1.5, size=k[n])
    steps[:, 0] = rng.uniform(-1.0, 1.0, size=num_examples)
    profile = np.cumsum(steps, axis=1)  # (N, size): level of each column
    clean = np.broadcast_to(profile[:, None, :], (num_examples, size, size)).copy()
    flip = rng.random(num_examples) < 0.5
    clean[flip] = np.swapaxes(clean[flip], 1, 2)
    image = clean + noise * rng.normal(size=clean.shape).astype(np.float32)
    return {"image": image[..., None].astype(np.float32), "edges": k.astype(np.float32),
            "clean": clean.astype(np.float32)}
