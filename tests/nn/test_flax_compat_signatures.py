"""Every constructor argument and call keyword of the installed Flax's LayerNorm/RMSNorm (NNX and linen) exists on
rnlib's class with the same kind, position and default; rnlib adds only ``impl``, after Flax's arguments."""
import dataclasses
import inspect
from collections.abc import Mapping

import flax.linen as fnn
import pytest
from flax import nnx

import rnlib.linen as rl
import rnlib.nn as rn

EXTRA = {"impl"}


def _same_default(a, b):
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return dict(a) == dict(b)
    return a is b or a == b


def _check_params(theirs: inspect.Signature, ours: inspect.Signature, where: str):
    tp, op = dict(theirs.parameters), dict(ours.parameters)
    missing = set(tp) - set(op)
    assert not missing, f"{where}: rnlib lacks {sorted(missing)}"
    assert set(op) - set(tp) <= EXTRA, f"{where}: unexpected extra arguments {sorted(set(op) - set(tp) - EXTRA)}"
    for name, p in tp.items():
        q = op[name]
        assert q.kind == p.kind, f"{where}: {name} is {q.kind}, Flax's is {p.kind}"
        assert _same_default(q.default, p.default), f"{where}: {name} defaults to {q.default!r}, Flax: {p.default!r}"
    positional = [n for n, p in tp.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    assert [n for n, p in op.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)] == positional
    for name in set(op) - set(tp):
        assert op[name].kind == op[name].KEYWORD_ONLY or op[name].default is not inspect.Parameter.empty


@pytest.mark.parametrize("ours,theirs", [(rn.LayerNorm, nnx.LayerNorm), (rn.RMSNorm, nnx.RMSNorm)])
def test_nnx_signatures_match_installed_flax(ours, theirs):
    _check_params(inspect.signature(theirs.__init__), inspect.signature(ours.__init__), f"{ours.__name__}.__init__")
    _check_params(inspect.signature(theirs.__call__), inspect.signature(ours.__call__), f"{ours.__name__}.__call__")


def _fields(cls):
    return [(f.name, f.default) for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]


@pytest.mark.parametrize("ours,theirs", [(rl.LayerNorm, fnn.LayerNorm), (rl.RMSNorm, fnn.RMSNorm)])
def test_linen_fields_match_installed_flax(ours, theirs):
    tf, of = _fields(theirs), _fields(ours)
    # Same names, order (positional construction) and defaults; rnlib's extras come after Flax's fields.
    assert [n for n, _ in of[:len(tf)]] == [n for n, _ in tf]
    for (name, d1), (_, d2) in zip(tf, of):
        assert _same_default(d2, d1), f"{ours.__name__}.{name}: {d2!r} != Flax's {d1!r}"
    assert {n for n, _ in of[len(tf):]} <= EXTRA
    _check_params(inspect.signature(theirs.__call__), inspect.signature(ours.__call__), f"{ours.__name__}.__call__")


@pytest.mark.parametrize("cls", [rn.AddNorm, rn.StatsLayerNorm])
def test_nnx_add_and_stats_norm_take_every_layer_norm_argument(cls):
    """AddNorm/StatsLayerNorm forward LayerNorm's constructor arguments: each of Flax's is accepted."""
    params = inspect.signature(nnx.LayerNorm.__init__).parameters
    kwargs = {n: p.default for n, p in params.items()
              if n not in ("self", "num_features", "rngs") and p.default is not inspect.Parameter.empty}
    m = cls(4, rngs=nnx.Rngs(0), **kwargs)
    assert m.axis_name is None and m.promote_dtype is kwargs["promote_dtype"]
    assert "mask" in inspect.signature(cls.__call__).parameters


def test_linen_add_and_stats_norm_have_layer_norm_fields():
    names = [n for n, _ in _fields(fnn.LayerNorm)]
    for cls in (rl.AddNorm, rl.StatsLayerNorm):
        assert [n for n, _ in _fields(cls)][:len(names)] == names
        assert "mask" in inspect.signature(cls.__call__).parameters
