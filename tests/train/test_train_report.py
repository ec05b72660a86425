"""Run outputs: a torn metrics.jsonl line does not stop a resume; progress off a terminal prints plain lines and
says that the first step compiles; on a terminal the bar says so too."""
import io
import json
import warnings

import pytest

from rnlib.train import TrainConfig, fit, load_digits
from rnlib.train._report import MetricsLog, Progress
from train_tinynet import tiny_model_fn

# One schedule horizon for both fits, so the second reuses the first's compiled step.
BASE = dict(data="digits", batch_size=16, seed=5, schedule="constant", schedule_steps=8, lr=0.05, devices=1,
            quiet=True, final_train_eval=False, log_every=2, eval_batch_size=128)


def test_metrics_log_drops_a_torn_line_once(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2, "loss": 1.0}\n{"step": 4, "loss": 0.9}\n{"step": 6, "lo')
    with pytest.warns(RuntimeWarning, match="dropped 1 unreadable line"):
        log = MetricsLog(str(path), resume_step=4)
    assert [r["step"] for r in log.rows] == [2, 4]
    assert (tmp_path / "metrics.jsonl.torn").read_text() == '{"step": 6, "lo\n'
    log.write({"step": 6, "loss": 0.8})
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [2, 4, 6]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean file: no warning on the next resume
        MetricsLog(str(path), resume_step=6)


def test_resume_after_a_kill_mid_metrics_line(tmp_path, capsys):
    """Also: without a terminal (pytest captures stdout) and without quiet, fit prints plain progress lines."""
    digits = load_digits()
    ck, out = tmp_path / "ck", tmp_path / "out"
    fit(TrainConfig(steps=4, ckpt_dir=str(ck), ckpt_every=4, out=str(out), **BASE), model_fn=tiny_model_fn,
        dataset=digits)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "loss": 0.1')  # what a SIGKILL during the append leaves
    with pytest.warns(RuntimeWarning, match="unreadable line"):
        res = fit(TrainConfig(steps=8, ckpt_dir=str(ck), resume=True, out=str(out), print_every=2,
                              **{**BASE, "quiet": False}), model_fn=tiny_model_fn, dataset=digits)
    assert res.steps == 8
    printed = capsys.readouterr().out.splitlines()
    assert printed[-3].startswith("compiling…") and printed[-2].startswith("step 6/8")
    assert printed[-1].startswith("step 8/8  loss")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6, 8]


def test_plain_progress_when_not_a_terminal():
    out = io.StringIO()  # not a TTY
    p = Progress(20, 0, quiet=False, description="m d", print_every=10, stream=out)
    p.compiling()
    for step in range(2, 21, 2):
        p.update(step, 1.0 / step, 0.5)
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("compiling…")
    assert [ln.split()[1] for ln in lines[1:]] == ["2/20", "12/20", "20/20"]  # first, every 10, last
    assert "incl. compile" in lines[1] and "loss 0.0500" in lines[-1]


def test_terminal_bar_says_compiling():
    rich = pytest.importorskip("rich.console")
    buf = io.StringIO()
    console = rich.Console(file=buf, force_terminal=True, width=160)
    p = Progress(20, 0, quiet=False, description="m d", console=console)
    p.compiling()
    shown = buf.getvalue()
    p.update(2, 0.5, 0.25)
    p.close()
    assert "compiling" in shown
    assert "loss 0.5000" in buf.getvalue()


def test_disabled_progress_prints_nothing():
    out = io.StringIO()
    p = Progress(4, 0, quiet=True, enabled=False, stream=out)
    p.compiling()
    p.update(4, 1.0, 0.0)
    assert out.getvalue() == ""
