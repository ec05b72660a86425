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


def help_text():
    from rnlib.train.cli import build_parser

    return build_parser().format_help()


def test_help_gives_every_option_a_text_and_the_defaults():
    from rnlib.train.cli import build_parser

    p = build_parser()
    for action in p._actions:
        assert action.help, f"{action.option_strings} has no help text"
    text = " ".join(help_text().split())
    text = text[text.index("options:"):]  # past the usage line
    for flag, default in [("--lr", "0.1"), ("--seed", "0"), ("--data", "digits"), ("--momentum", "0.9"),
                          ("--batch-size", "128"), ("--weight-decay", "0.0001"), ("--steps", "1500")]:
        seg = text[text.index(flag + " "):]
        seg = seg[:seg.index(" --", 3)]
        assert "default" in seg and default in seg, seg
    no_aug = text[text.index("--no-augment "):]
    no_aug = no_aug[:no_aug.index(" --", 3)]
    assert "True" not in no_aug and "on" in no_aug  # it says augmentation is on by default


@pytest.mark.parametrize("args,msg", [
    (["--steps", "0"], "argument --steps: must be a positive integer, got 0"),
    (["--batch-size", "-4"], "argument --batch-size: must be a positive integer"),
    (["--model-kwargs", "{norm: layer}"], "argument --model-kwargs: not valid JSON"),
    (["--model-kwargs", "[1]"], "expected a JSON object"),
])
def test_cli_argument_errors_name_the_flag(capsys, args, msg):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert msg in err and "total_steps" not in err and "invalid loads value" not in err


def test_cli_bad_model_depth_lists_valid_names(tmp_path, capsys):
    assert main(["--model", "resnet21", "--steps", "1", "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "resnet21" in err and "valid names" in err and "resnet20" in err and "resnet50" in err


def test_cifar_missing_files_are_listed_once(tmp_path, capsys):
    (tmp_path / "data_batch_1").write_bytes(b"")
    assert main(["--data", "cifar10", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    for name in ("data_batch_2", "data_batch_5", "test_batch"):
        assert err.count(name) == 1, err
    assert "data_batch_1" not in err


def test_imagenet_folder_errors_through_the_cli(tmp_path, capsys):
    pytest.importorskip("grain")
    (tmp_path / "train").mkdir()
    assert main(["--data", "imagenet", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "train") in err and "is empty" in err
    assert main(["--data", "imagenet", "--out", str(tmp_path / "o")]) == 2
    assert "needs --data-dir" in capsys.readouterr().err
