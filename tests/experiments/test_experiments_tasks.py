"""Task generators: labels correct by construction, seeded, well-formed."""

import numpy as np
import pytest

from benchmarks.experiments.tasks import HI_LO, card_counting, edge_density


def test_hi_lo_table():
    # 2..6 -> +1, 7..9 -> 0, 10..A -> -1; a full deck sums to 0 (the count is balanced).
    assert list(HI_LO[:5]) == [1] * 5 and list(HI_LO[5:8]) == [0] * 3 and list(HI_LO[8:]) == [-1] * 5
    assert HI_LO.sum() == 0


def test_card_counting_labels_and_shoe():
    d = card_counting(3, 50, length=312, num_decks=6)  # the whole shoe
    # Every sequence is a permutation of the shoe: 24 of each rank, so the final count is 0.
    np.testing.assert_array_equal(np.bincount(d["ranks"][7], minlength=13), np.full(13, 24))
    np.testing.assert_array_equal(d["count"][:, -1], 0)
    # Running count recomputed by a plain loop.
    for n in range(3):
        c = 0
        for t, r in enumerate(d["ranks"][n]):
            c += {"2": 1, "3": 1, "4": 1, "5": 1, "6": 1, "7": 0, "8": 0, "9": 0}.get(
                ["2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K", "A"][r], -1)
            assert d["count"][n, t] == c
    np.testing.assert_array_equal(d["cards"].argmax(-1), d["ranks"])
    assert d["cards"].sum(-1).min() == 1


def test_card_counting_seeded_and_checked():
    a, b, c = card_counting(1, 4), card_counting(1, 4), card_counting(2, 4)
    np.testing.assert_array_equal(a["ranks"], b["ranks"])
    assert not np.array_equal(a["ranks"], c["ranks"])
    with pytest.raises(ValueError, match="length"):
        card_counting(0, 2, length=53, num_decks=1)


def test_edge_density_labels_count_the_jumps():
    d = edge_density(0, 200, size=16, max_edges=8)
    assert d["image"].shape == (200, 16, 16, 1)
    clean = d["clean"]
    for n in range(200):
        img = clean[n]
        vertical = np.allclose(img, img[0:1, :])  # constant down the columns -> vertical edges
        prof = img[0] if vertical else img[:, 0]
        if not vertical:
            assert np.allclose(img, img[:, 0:1])
        assert np.sum(np.abs(np.diff(prof)) > 0.25) == d["edges"][n]
        # Noise never hides or fakes a jump: the noisy profile's big differences are the same count.
        noisy = d["image"][n, ..., 0].mean(axis=0 if vertical else 1)
        assert np.sum(np.abs(np.diff(noisy)) > 0.25) == d["edges"][n]
    assert set(np.unique(d["edges"])) == set(range(9))


def test_edge_density_seeded_and_checked():
    np.testing.assert_array_equal(edge_density(5, 3)["image"], edge_density(5, 3)["image"])
    with pytest.raises(ValueError, match="max_edges"):
        edge_density(0, 2, size=8, max_edges=8)
