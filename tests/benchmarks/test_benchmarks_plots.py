"""Benchmark plots and tables built from small synthetic records: what a reader needs is on the figure.

One legend, outside every panel; y axes from 0 (one range where panels show the same quantity); plain tick labels;
titles in words; shapes and batch sizes read from the records; ratios against the reference printed next to the
points; depths a mode skipped marked where their bar would be. Nothing here times anything.
"""
import pytest

pytest.importorskip("matplotlib")
from benchmarks import plots, report  # noqa: E402

DEVICE = {"device": "cpu (2 cores)", "jax_version": "0.0.test"}


def _norm_rec(op, impl, width, p, frac, dtype="float32", rows=None, **extra):
    rows = rows or (1 << 14) // width
    return {"suite": "norms", "name": op, "impl": impl, "shape": [rows, width], "dtype": dtype, "pass": p,
            "time_s": 1e-3 / frac if frac else None, "gbps": None, "frac_of_copy": frac, **DEVICE, **extra}


def _norm_recs():
    """Two ops x two passes x widths 256/4096; rnlib_native is 2x, 3x flax_linen's speed; jnp_reference 0.5x."""
    recs = []
    for op in ("layer_norm", "rms_norm"):
        for p in ("fwd", "fwd+bwd"):
            for w, base in ((256, 0.4), (4096, 0.2)):
                k = 2.0 if w == 256 else 3.0
                recs += [_norm_rec(op, "flax_linen", w, p, base), _norm_rec(op, "rnlib_native", w, p, k * base),
                         _norm_rec(op, "jnp_reference", w, p, base / 2)]
    recs.append(_norm_rec("layer_norm", "torch", 256, "fwd", None, error="RuntimeError: boom"))
    return recs


def _drawn(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _legend_is_single_and_outside(fig):
    renderer = _drawn(fig)
    assert len(fig.legends) == 1, "one legend for the whole figure"
    assert all(ax.get_legend() is None for ax in fig.axes), "no legend inside a panel"
    box = fig.legends[0].get_window_extent(renderer)
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent(renderer)), f"legend covers panel {ax.get_title()!r}"
    fig_box = fig.bbox
    assert fig_box.x0 <= box.x0 and box.x1 <= fig_box.x1 and fig_box.y0 <= box.y0 and box.y1 <= fig_box.y1
    return fig.legends[0]


def _texts(ax):
    return [t.get_text() for t in ax.texts]


def test_norms_figure_one_outside_legend_shared_y_from_zero_and_ratios():
    recs = _norm_recs()
    fig = plots.norms_figure("float32", recs)
    legend = _legend_is_single_and_outside(fig)
    labels = [t.get_text() for t in legend.get_texts()]
    assert any(lab.startswith("rnlib_native") for lab in labels) and any("x + 1" in lab for lab in labels)
    assert len(fig.axes) == 4
    limits = {ax.get_ylim() for ax in fig.axes}
    assert len(limits) == 1, f"panels must share one y range, got {limits}"
    lo, hi = limits.pop()
    assert lo == 0 and hi > 1.0  # from 0, with the copy line (1.0) and the highest point (0.8) in range
    for ax in fig.axes:
        assert ax.get_title() in {"layer norm, forward", "layer norm, forward + backward", "RMS norm, forward",
                                  "RMS norm, forward + backward"}
        ratios = [t for t in _texts(ax) if t.endswith("×")]
        assert ratios == ["2.00×", "3.00×"], ratios  # rnlib_native ÷ flax_linen at each width
    for ax in fig.axes[2:]:  # the bottom row carries the shared x labels: plain widths, not 2^8
        assert [t.get_text() for t in ax.get_xticklabels()] == ["256", "4096"]
    assert "higher is faster" in fig._suptitle.get_text() and "float32" in fig._suptitle.get_text()
    assert "higher is faster" in fig.axes[0].get_ylabel()
    caption = fig._supxlabel.get_text().replace("\n", " ")
    assert "x + 1" in caption and "64×256, 4×4096" in caption and "16,384 elements each" in caption
    assert "rnlib_native's points: its speed ÷ flax_linen's" in caption
    assert any("failed: torch" in t for t in _texts(fig.axes[0]))
    plots.plt.close(fig)


def test_norms_ratio_reference_falls_back_when_flax_linen_is_absent():
    recs = [r for r in _norm_recs() if r["impl"] != "flax_linen"]
    fig = plots.norms_figure("float32", recs)
    assert [t for t in _texts(fig.axes[0]) if t.endswith("×")] == ["4.00×", "6.00×"]  # vs jnp_reference
    assert "jnp_reference's" in fig._supxlabel.get_text().replace("\n", " ")
    plots.plt.close(fig)


def _compile_recs():
    recs = []
    for mode, compile_s in (("rnlib_scan", (4.0, 4.0, 4.0)), ("rnlib_unrolled", (5.0, 10.0, None))):
        for depth, c in zip((20, 110, 1202), compile_s):
            note = {"note": "skipped: predicted compile 110 s > budget 60 s"} if c is None else {}
            step = None if c is None or depth == 1202 else 0.01 * depth / 20
            recs.append({"suite": "compile", "name": f"resnet{depth}", "impl": mode, "shape": [8, 32, 32, 3],
                         "dtype": "float32", "pass": "fwd+bwd", "time_s": step, "compile_s": c, "depth": depth,
                         "family": "resnet", "batch": 8, "scan": mode == "rnlib_scan", **DEVICE, **note})
    recs[2]["note"] = "step not timed: predicted 40 s > budget 8 s"
    return recs


def test_compile_figure_marks_skipped_depths_and_uses_plain_ticks():
    fig = plots.compile_figure(_compile_recs())
    _legend_is_single_and_outside(fig)
    compile_ax, step_ax = fig.axes
    for ax in (compile_ax, step_ax):
        assert [t.get_text() for t in ax.get_xticklabels()] == ["20", "110", "1202"]
        assert ax.get_ylim()[0] == 0 and ax.get_yscale() == "linear"
        assert "lower is faster" in ax.get_ylabel()
        skipped = [t for t in ax.texts if t.get_text().startswith("skipped: predicted compile")]
        assert len(skipped) == 1
        assert skipped[0].xy[0] > 1.5, "the note sits in depth 1202's slot (x index 2)"
        assert any(list(line.get_xdata()) == [skipped[0].xy[0]] and line.get_marker() == "x" for line in ax.lines)
    # unrolled 10 s vs scan 4 s at depth 110
    assert "10.0 s 2.50× scan" in " ".join(_texts(compile_ax)).replace("\n", " ")
    assert any(t.startswith("step not timed") for t in _texts(step_ax))
    assert "batch 8 × 32×32×3 (float32)" in fig._supxlabel.get_text().replace("\n", " ")
    plots.plt.close(fig)


def _train_recs():
    base = {"suite": "train", "pass": "fwd+bwd", "dtype": "float32", "gbps": None, "frac_of_copy": None, **DEVICE}
    return [
        {**base, "name": "resnet20", "impl": "rnlib", "shape": [32, 32, 32, 3], "batch": 32, "time_s": 0.2,
         "images_per_s": 160.0},
        {**base, "name": "resnet20", "impl": "reference_linen", "shape": [32, 32, 32, 3], "batch": 32, "time_s": 0.1,
         "images_per_s": 320.0},
        {**base, "name": "resnet20", "impl": "torch", "shape": [32, 32, 32, 3], "batch": 32, "time_s": None,
         "images_per_s": None, "error": "ImportError: no torch"},
        # a ResNet-50-style record: no images_per_s, the speed comes from batch / time_s; image_size carried along
        {**base, "name": "resnet50", "impl": "rnlib", "shape": [16, 224, 224, 3], "batch": 16, "image_size": 224,
         "time_s": 0.5},
        {**base, "name": "resnet50", "impl": "reference_linen", "shape": [16, 224, 224, 3], "time_s": 0.4},
        {**base, "name": "resnet50", "impl": "torch", "shape": [16, 224, 224, 3], "batch": 16, "image_size": 224,
         "time_s": 0.2, "torch_mode": "eager (torch.compile failed: RuntimeError: x)", "step_bytes": None},
    ]


def test_train_figure_relative_bars_with_and_without_images_per_s():
    fig = plots.train_figure(_train_recs())
    _legend_is_single_and_outside(fig)
    (ax,) = fig.axes
    assert ax.get_ylim()[0] == 0 and "higher is faster" in ax.get_ylabel()
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["resnet20\nbatch 32 × 32×32×3", "resnet50\nbatch 16 × 224×224×3"]
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    assert heights == [0.5, 0.8, 1.0, 1.0, 2.0]  # 160/320, (16/0.5)/(16/0.4), the two references, torch 80/40
    text = " ".join(_texts(ax))
    assert "0.50×\n160/s" in text and "0.80×\n32/s" in text and "2.00×\n80/s\neager" in text
    assert "ImportError" in text.replace("\n", " ")  # the failed torch run is marked, not dropped
    plots.plt.close(fig)


def test_train_markdown_states_batch_and_example_shape_and_speed_ratio():
    md = report.train_markdown(_train_recs())
    assert "| model | batch | one example | rnlib | reference_linen | torch | rnlib / ref speed |" in md
    assert "| resnet20 | 32 | 32x32x3 | 160 (200.0 ms) | 320 (100.0 ms) | ImportError: no torch | 0.50 |" in md
    assert "| resnet50 | 16 | 224x224x3 | 32 (500.0 ms) | 40 (400.0 ms) | 80 (200.0 ms) | 0.80 |" in md


def test_batch_and_example_reads_the_record_fields():
    assert report.batch_and_example({"shape": [8, 128, 256], "batch": 8}) == (8, [128, 256])
    assert report.batch_and_example({"shape": [4, 32, 32, 3]}) == (4, [32, 32, 3])
    assert report.batch_and_example({"batch": 64, "image_size": 224}) == (64, [224, 224])
    assert report.train_speed({"batch": 64, "time_s": 0.5}) == 128.0
    assert report.train_speed({"images_per_s": 7.0, "batch": 64, "time_s": 0.5}) == 7.0
    assert report.train_speed({"batch": 64, "time_s": None}) is None


def test_replot_redraws_pngs_and_markdown_from_json(tmp_path, capsys):
    for name, recs in (("norms", _norm_recs()), ("train", _train_recs()), ("compile", _compile_recs())):
        report.write_json(recs, tmp_path / f"{name}.json")
    assert report.main(["--replot", str(tmp_path)]) == 0
    for png in ("norms_float32.png", "train.png", "compile.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    md = (tmp_path / "results.md").read_text()
    assert "Shapes (rows × width): 64×256, 4×4096 (16,384 elements each)." in md
    assert "input: batch 8 of 32x32x3 (float32)" in md and "| resnet50 | 16 | 224x224x3 |" in md
    assert "skipped: predicted compile 110 s > budget 60 s" in md
    assert "![norms_float32](norms_float32.png)" in md and "![compile](compile.png)" in md
    assert "wrote" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report.main(["--replot", str(empty)]) == 2


def test_committed_records_make_readable_figures():
    """The committed JSON records (what the committed PNGs are drawn from) give figures that pass the same checks."""
    import pathlib

    results = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    recs = {name: report.read_json(results / f"{name}.json") for name in plots.PLOTTERS}
    dtype = sorted({r["dtype"] for r in recs["norms"]})[0]
    figs = [plots.norms_figure(dtype, [r for r in recs["norms"] if r["dtype"] == dtype]),
            plots.train_figure(recs["train"]), plots.compile_figure(recs["compile"])]
    for fig in figs:
        _legend_is_single_and_outside(fig)
        assert all(ax.get_ylim()[0] == 0 for ax in fig.axes)
    assert len({ax.get_ylim() for ax in figs[0].axes}) == 1
    compile_texts = " ".join(t.get_text().replace("\n", " ") for t in figs[2].axes[0].texts)
    for r in recs["compile"]:
        if r.get("compile_s") is None:  # every depth a mode did not compile is marked with its reason
            assert r.get("note", "error") in compile_texts
    for fig in figs:
        plots.plt.close(fig)
