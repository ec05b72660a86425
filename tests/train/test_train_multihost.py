"""Two processes under jax.distributed (CPU, gloo), each feeding its half of every batch, train exactly like one
process over two devices."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from rnlib.train import TrainConfig, fit, load_digits
from train_tinynet import tiny_model_fn

HERE = os.path.dirname(os.path.abspath(__file__))
CFG = dict(data="digits", steps=6, batch_size=16, seed=5, schedule="constant", lr=0.05, quiet=True,
           final_train_eval=False, log_every=1, eval_batch_size=128)


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]

def _run_two_processes(script: str, timeout: int) -> None:
    """Run ``script`` as processes 0 and 1 (one CPU device each) and fail with their output if either fails."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for i in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout)[0].decode())
        finally:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)



@pytest.mark.slow  # two fresh processes compile everything (~45 s on a busy 2-core CPU)
@pytest.mark.skipif(len(jax.devices()) < 2, reason="the single-process reference needs 2 devices")
def test_two_processes_match_one_process_two_devices(tmp_path):
    port = free_port()
    script = textwrap.dedent(f"""
        import sys
        import jax
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address="localhost:{port}", num_processes=2,
                                   process_id=int(sys.argv[1]))
        sys.path.insert(0, {HERE!r})
        from rnlib.train import TrainConfig, fit
        from train_tinynet import tiny_model_fn
        assert jax.process_count() == 2 and len(jax.local_devices()) == 1
        fit(TrainConfig(out={str(tmp_path / 'out')!r}, **{CFG!r}), model_fn=tiny_model_fn)
    """)
    _run_two_processes(script, timeout=240)
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((tmp_path / "out" / "final.json").read_text())
    ref = fit(TrainConfig(devices=2, **CFG), model_fn=tiny_model_fn, dataset=load_digits())
    np.testing.assert_allclose([r["loss"] for r in rows], [h["loss"] for h in ref.history], rtol=1e-5)
    assert final["test_accuracy"] == pytest.approx(ref.test_accuracy) and final["devices"] == 2


@pytest.mark.slow  # two fresh processes compile everything (~1 min on a busy 2-core CPU)
@pytest.mark.skipif(len(jax.devices()) < 2, reason="the single-process reference needs 2 devices")
def test_imagenet_pipeline_two_processes_read_disjoint_shards_and_match(tmp_path):
    """Each process decodes only its half of every global batch (disjoint global stream positions whose union
    is every position), and the two-process run's losses equal one process over two devices."""
    pytest.importorskip("grain")
    from imagenet_tree import make_tree
    from rnlib.train import load_imagenet

    root = make_tree(tmp_path / "tree")
    cfg = dict(data="imagenet", data_dir=root, image_size=32, workers=0, steps=6, batch_size=8, seed=3,
               schedule="constant", lr=0.05, quiet=True, final_train_eval=False, log_every=1, eval_batch_size=8)
    port = free_port()
    script = textwrap.dedent(f"""
        import json, sys
        import jax
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address="localhost:{port}", num_processes=2,
                                   process_id=int(sys.argv[1]))
        sys.path.insert(0, {HERE!r})
        from rnlib.train import TrainConfig, fit
        from rnlib.train import _imagenet as imagenet
        from train_tinynet import tiny_model_fn
        seen = []
        position = imagenet._TrainSample.global_position
        def record(self, j):
            q = position(self, j)
            seen.append(q)
            return q
        imagenet._TrainSample.global_position = record
        fit(TrainConfig(out={str(tmp_path / 'out')!r}, **{cfg!r}), model_fn=tiny_model_fn)
        with open({str(tmp_path)!r} + f"/seen{{sys.argv[1]}}.json", "w") as f:
            json.dump(seen, f)
    """)
    _run_two_processes(script, timeout=300)
    seen = [set(json.loads((tmp_path / f"seen{i}.json").read_text())) for i in range(2)]
    # Process i reads rows 4i..4i+3 of every global batch of 8 (and may read ahead past step 6).
    assert not seen[0] & seen[1] and set(range(6 * 8)) <= seen[0] | seen[1]
    assert all(q % 8 < 4 for q in seen[0]) and all(q % 8 >= 4 for q in seen[1])
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((tmp_path / "out" / "final.json").read_text())
    ref = fit(TrainConfig(devices=2, **cfg), model_fn=tiny_model_fn, dataset=load_imagenet(root, image_size=32))
    np.testing.assert_allclose([r["loss"] for r in rows], [h["loss"] for h in ref.history], rtol=1e-5)
    assert final["test_accuracy"] == pytest.approx(ref.test_accuracy) and final["devices"] == 2
