"""`rnlib-train` end to end: a few steps of a real rnlib model, outputs on disk; argument errors."""
import json

import pytest

from rnlib.train.cli import main


def test_cli_smoke_writes_metrics_final_and_png(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["--model", "resnet8", "--data", "digits", "--steps", "4", "--batch-size", "8", "--seed", "1",
               "--devices", "1", "--log-every", "2", "--out", str(out), "--quiet", "--ckpt-dir",
               str(tmp_path / "ck"), "--ckpt-every", "2"])
    assert rc == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    assert set(rows[0]) >= {"step", "loss", "train_error", "lr", "time"} and rows[0]["lr"] == pytest.approx(0.1)
    final = json.loads((out / "final.json").read_text())
    assert final["steps"] == 4 and 0.0 <= final["test_accuracy"] <= 1.0 and 0.0 <= final["train_error"] <= 1.0
    assert len(final["params_sha256"]) == 64 and final["model"] == "resnet8"
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "test accuracy" in capsys.readouterr().out
    # resuming a finished run restores step 4 and changes nothing
    rc = main(["--model", "resnet8", "--data", "digits", "--steps", "4", "--batch-size", "8", "--seed", "1",
               "--devices", "1", "--out", str(out), "--quiet", "--ckpt-dir", str(tmp_path / "ck"), "--resume"])
    assert rc == 0
    again = json.loads((out / "final.json").read_text())
    assert again["params_sha256"] == final["params_sha256"] and again["resumed_from_step"] == 4


@pytest.mark.parametrize("args,msg", [
    (["--data", "cifar10"], "needs --data-dir"),
    (["--data", "cifar10", "--data-dir", "/nonexistent/cifar"], "does not exist"),
    (["--resume"], "--resume needs --ckpt-dir"),
    (["--model", "vgg16"], "unknown model name"),
])
def test_cli_errors_are_clear(tmp_path, capsys, args, msg):
    assert main(args + ["--out", str(tmp_path), "--quiet"]) == 2
    assert msg in capsys.readouterr().err
