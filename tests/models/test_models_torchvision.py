"""from_torchvision / to_torchvision: logits equal a torchvision-named PyTorch ResNet's, exact round trips, clear errors.

The PyTorch model is ``benchmarks/reference/torchvision_resnet.py`` (torchvision's modules and key names, written
out because torchvision does not import beside every torch build). Tests that need torch skip without it; the
round-trip and error tests use NumPy state dicts and run everywhere.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rnlib.models import build, imagenet_resnet
from rnlib.models import from_torchvision, to_torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _init(depth: int, num_classes: int = 1000, seed: int = 0):
    """An rnlib ImageNet ResNet with random values in every leaf (variances positive), built from the abstract
    model: running the initialisers would compile a large program for nothing here."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: imagenet_resnet(depth, num_classes=num_classes,
                                                                         rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)
    pure = jax.tree_util.tree_map_with_path(
        lambda p, a: (rng.uniform(0.5, 1.5, a.shape) if jax.tree_util.keystr(p).endswith("['var']")
                      else rng.normal(size=a.shape)).astype(a.dtype), nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


@jax.jit
def _logits(model, x):
    return model(x)


def _torch():
    return pytest.importorskip("torch", reason="torch is not installed (optional peer; CI installs torch 2.13.0)")


def _torch_model(depth: int, seed: int = 0):
    """The torchvision-named ResNet with random weights and non-trivial BatchNorm parameters and statistics."""
    torch = _torch()
    sys.path.insert(0, ROOT)
    from benchmarks.reference.torchvision_resnet import resnet

    torch.manual_seed(seed)
    model = resnet(depth, num_classes=10)
    g = torch.Generator().manual_seed(seed + 1)
    last_bn = {n + (".bn3" if depth >= 50 else ".bn2") for n, m in model.named_modules() if n.count(".") == 1}
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                # a trained net's last norm in a block has small scales; this keeps the residual stream (and the
                # logits compared to 1e-4) of order 1-10 instead of growing block by block
                low, width = (0.1, 0.3) if name in last_bn else (0.5, 1.0)
                m.weight.copy_(low + width * torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.3 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
        model.fc.bias.copy_(torch.randn(10, generator=g))
    return model.eval()


def _numpy_state(model) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("depth", [18, 50])
def test_eval_logits_equal_torchvision(depth):
    torch = _torch()
    tv = _torch_model(depth)
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = tv(torch.from_numpy(x)).numpy()
    model = from_torchvision(tv.state_dict(), f"resnet{depth}")
    got = np.asarray(_logits(model, jnp.asarray(x.transpose(0, 2, 3, 1))))
    assert got.shape == want.shape == (2, 10)
    assert 0.5 < np.abs(want).max() < 50  # non-trivial logits of a realistic size (1e-4 is then ~1e-5 relative)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    # A numpy copy of the same state dict gives the same model.
    again = from_torchvision(_numpy_state(tv), f"resnet{depth}")
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(again))):
        np.testing.assert_array_equal(a, b)


def test_to_torchvision_loads_into_torch_and_round_trips():
    torch = _torch()
    tv = _torch_model(18, seed=3)
    sd = tv.state_dict()
    back = to_torchvision(from_torchvision(sd, "resnet18"), tensors="torch")
    assert list(back) == list(sd)  # same keys, same order
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            assert back[k].dtype == v.dtype and int(back[k]) == 0
        else:
            assert torch.equal(back[k], v), k
    fresh = _torch_model(18, seed=9)
    fresh.load_state_dict(back)  # strict: every key torch expects, nothing else
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), tv(x))


def test_round_trip_is_exact_without_torch():
    model = _init(18, num_classes=7, seed=1)  # random values everywhere: a swapped mean/var or scale/bias shows
    sd = to_torchvision(model)
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    assert sd["conv1.weight"].shape == (64, 3, 7, 7) and sd["fc.weight"].shape == (7, 512)
    assert sd["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1) and "layer1.0.downsample.0.weight" not in sd
    assert len([k for k in sd if not k.endswith("num_batches_tracked")]) == 102  # torchvision resnet18: 102 tensors
    again = from_torchvision(sd, "resnet18")
    for (p, a), b in zip(jax.tree_util.tree_flatten_with_path(nnx.state(model))[0], jax.tree.leaves(nnx.state(again))):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(p))
    sd2 = to_torchvision(again)
    assert list(sd2) == list(sd) and all(np.array_equal(sd[k], sd2[k]) for k in sd)
    # kw reach the builder; the stored layout does not depend on scan (stages are stacked either way)
    unrolled = from_torchvision(sd, "resnet18", scan=False)
    assert not unrolled.stacks[0].scan and again.stacks[0].scan
    sd3 = to_torchvision(unrolled)
    assert all(np.array_equal(sd[k], sd3[k]) for k in sd)


def test_resnet50_key_layout():
    sd = to_torchvision(_init(50))
    assert len([k for k in sd if not k.endswith("num_batches_tracked")]) == 267  # torchvision resnet50: 267 tensors
    assert sd["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert sd["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # v1.5: the stride sits on the 3x3
    assert sd["layer4.2.bn3.running_var"].shape == (2048,) and sd["fc.weight"].shape == (1000, 2048)
    assert sum(v.size for k, v in sd.items() if "running" not in k and "num_batches" not in k) == 25_557_032


@pytest.fixture(scope="module")
def sd18():
    return to_torchvision(_init(18, num_classes=10))


def test_wrong_architecture_names_the_key(sd18):
    with pytest.raises(KeyError, match=r"missing key 'layer1\.0\.conv3\.weight'.*resnet50"):
        from_torchvision(sd18, "resnet50")
    with pytest.raises(KeyError, match=r"missing key 'layer1\.2\.conv1\.weight'"):
        from_torchvision(sd18, "resnet34")
    extra = dict(sd18, **{"layer1.2.conv1.weight": sd18["layer1.1.conv1.weight"]})
    with pytest.raises(KeyError, match=r"unexpected key 'layer1\.2\.conv1\.weight'"):
        from_torchvision(extra, "resnet18")
    with pytest.raises(KeyError, match=r"unexpected key 'module\.conv1\.weight'"):
        from_torchvision(dict(sd18, **{"module.conv1.weight": sd18["conv1.weight"]}), "resnet18")
    with pytest.raises(ValueError, match="unknown arch 'resnet19'"):
        from_torchvision(sd18, "resnet19")


def test_shape_mismatch_names_key_and_shapes(sd18):
    bad = dict(sd18, **{"layer3.1.bn2.running_var": np.ones(128, np.float32)})
    with pytest.raises(ValueError, match=r"'layer3\.1\.bn2\.running_var' has shape \(128,\).*has \(256,\)"):
        from_torchvision(bad, "resnet18")
    bad = dict(sd18, **{"conv1.weight": np.zeros((64, 3, 3, 3), np.float32)})
    with pytest.raises(ValueError, match=r"'conv1\.weight' has shape \(64, 3, 3, 3\).*has \(64, 3, 7, 7\)"):
        from_torchvision(bad, "resnet18")


def test_to_torchvision_rejects_other_layouts():
    with pytest.raises(ValueError, match="ImageNet ResNet"):
        to_torchvision(nnx.eval_shape(lambda: build("resnet20", 10, nnx.Rngs(0))))
    with pytest.raises(ValueError, match="shortcut='C'"):
        to_torchvision(nnx.eval_shape(lambda: imagenet_resnet(18, shortcut="C", rngs=nnx.Rngs(0))))
    with pytest.raises(ValueError, match="tensors="):
        to_torchvision(_init(18), tensors="jax")


def test_numpy_state_dict_does_not_import_torch(sd18, tmp_path):
    np.savez(tmp_path / "sd.npz", **sd18)
    code = ("import sys, numpy as np\nfrom rnlib.models import from_torchvision, to_torchvision\n"
            f"sd = dict(np.load({str(tmp_path / 'sd.npz')!r}))\n"
            "back = to_torchvision(from_torchvision(sd, 'resnet18'))\n"
            "assert all(np.array_equal(back[k], sd[k]) for k in sd)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
