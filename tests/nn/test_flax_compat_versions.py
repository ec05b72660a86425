"""The import-time jax/flax check: supported pairs pass, unsupported ones fail with both versions named."""
import importlib.metadata

import pytest

import rnlib._compat as compat


@pytest.mark.parametrize("jax_v,flax_v", [
    ("0.10.2", "0.12.8"), ("0.10.2", "0.12.9"), ("0.11.0", "0.12.9"), ("0.11.1", "0.12.10"), ("0.11.2", "0.12.12"),
    ("0.12.0.1", "0.12.12"), ("0.13.0.dev20260101", "0.13.0rc1"),
])
def test_supported_pairs(jax_v, flax_v):
    assert compat.problem(jax_v, flax_v) is None


@pytest.mark.parametrize("jax_v,flax_v,needle", [
    ("0.11.1", "0.12.8", "flax 0.12.8 does not work with jax 0.11.1"),
    ("0.12.0.1", "0.12.9", "flax >= 0.12.10"),
    ("0.10.1", "0.12.8", "jax >= 0.10.2, found jax 0.10.1"),
    ("0.10.2", "0.11.2", "flax >= 0.12.8, found flax 0.11.2"),
    (None, "0.12.8", "needs jax installed"),
])
def test_unsupported_pairs_name_the_versions(jax_v, flax_v, needle):
    assert needle in compat.problem(jax_v, flax_v)


def test_check_versions_raises_import_error(monkeypatch):
    fake = {"jax": "0.11.2", "flax": "0.12.9"}
    monkeypatch.setattr(compat, "_installed", lambda name: fake[name])
    with pytest.raises(ImportError, match=r"flax 0\.12\.9 does not work with jax 0\.11\.2"):
        compat.check_versions()


def test_installed_stack_is_supported():
    versions = {n: importlib.metadata.version(n) for n in ("jax", "flax")}
    assert compat.problem(versions["jax"], versions["flax"]) is None, versions


def test_parse_version():
    assert compat.parse_version("0.12.0.1") == (0, 12, 0, 1)
    assert compat.parse_version("0.11.0.dev20250101") == (0, 11, 0)
    assert compat.parse_version("0.12.10rc1") == (0, 12, 10)
