#!/usr/bin/env bash
# One call on a GPU machine (jax + flax + optax + chex preinstalled, no network), from the repository root:
#   1. make `rnlib` (with `kernels/` as `rnlib.kernels`) importable without downloading anything,
#   2. run the kernel tests on the GPU (tests/kernels with RNLIB_KERNEL_TEST_PLATFORM=gpu: Triton backend),
#   3. time layer norm fwd / bwd / fwd+bwd against a copy (benchmarks/device/gpu_bench.py).
# Results (tests.log, bench.log, layer_norm_bandwidth.{json,md}) go to $1, else $OUT, else benchmarks/results/device.
# Extra arguments after the folder go to gpu_bench.py (e.g. --widths 256 4096 --dtypes bfloat16).
# RUN_SH_SKIP_TESTS=1 skips step 2.  `benchmarks/device/run.sh DIR --cpu-smoke` dry-runs both steps on CPU.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO="$(pwd)"
OUT_DIR="${1:-${OUT:-benchmarks/results/device}}"
shift || true
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
PY="${PYTHON:-python3}"
SMOKE=0
for a in "$@"; do [ "$a" = "--cpu-smoke" ] && SMOKE=1; done

# 1. rnlib importable: as installed, else from this checkout: the repo root on PYTHONPATH for `rnlib`, plus a
#    sitecustomize (in a temp folder) whose import hook maps `rnlib.kernels` to ./kernels, as pyproject's
#    package-dir does for an install. No pip, no network. (It shadows any other sitecustomize on the machine.)
if ! "$PY" -c "import rnlib.kernels, rnlib.ops" 2>/dev/null; then
  SHIM="$(mktemp -d)"
  cat > "$SHIM/sitecustomize.py" <<PYEOF
import importlib.abc, importlib.util, sys
_KERNELS = "$REPO/kernels"
class _RnlibKernelsFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "rnlib.kernels":
            return None
        return importlib.util.spec_from_file_location(
            name, _KERNELS + "/__init__.py", submodule_search_locations=[_KERNELS])
sys.meta_path.insert(0, _RnlibKernelsFinder())
PYEOF
  export PYTHONPATH="$REPO:$SHIM${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import rnlib.kernels as k, rnlib.ops, jax; print('rnlib.kernels from', k.__file__, '| jax', jax.__version__, jax.devices())" \
  || { echo "cannot import rnlib" >&2; exit 3; }

if [ "$SMOKE" = 1 ]; then
  export JAX_PLATFORMS=cpu TEST_PLATFORM=cpu
else
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cuda}" TEST_PLATFORM=gpu
fi

# 2. kernel tests on the device (the default, non-slow set).
rc_tests=0
if [ "${RUN_SH_SKIP_TESTS:-0}" != 1 ]; then
  echo "== kernel tests (platform $TEST_PLATFORM) =="
  if "$PY" -c "import pytest" 2>/dev/null; then
    RNLIB_KERNEL_TEST_PLATFORM="$TEST_PLATFORM" timeout "${RUN_SH_TEST_TIMEOUT:-200}" \
      "$PY" -m pytest -q -p no:cacheprovider tests/kernels --durations=10 2>&1 | tee "$OUT_DIR/tests.log"
    rc_tests=${PIPESTATUS[0]}
  else  # no pytest on the machine: the same checker, driven by a plain script
    timeout "${RUN_SH_TEST_TIMEOUT:-200}" "$PY" benchmarks/device/gpu_selfcheck.py --platform "$TEST_PLATFORM" \
      2>&1 | tee "$OUT_DIR/tests.log"
    rc_tests=${PIPESTATUS[0]}
  fi
  echo "kernel tests exit code: $rc_tests"
fi

# 3. bandwidth benchmark.
echo "== layer norm bandwidth =="
"$PY" benchmarks/device/gpu_bench.py --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/bench.log"
rc_bench=${PIPESTATUS[0]}
echo "tests rc=$rc_tests bench rc=$rc_bench; results in $OUT_DIR"
[ "$rc_tests" = 0 ] && [ "$rc_bench" = 0 ]
