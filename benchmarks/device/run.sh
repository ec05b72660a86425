#!/usr/bin/env bash
# One call on a GPU machine (jax + flax + optax + chex preinstalled, no network), from the repository root:
#   1. install rnlib from this checkout with pip (offline, --no-deps: nothing is downloaded),
#   2. run the kernel tests on the GPU (tests/kernels with RNLIB_KERNEL_TEST_PLATFORM=gpu: Triton backend),
#   3. time layer norm fwd / bwd / fwd+bwd against a copy (benchmarks/device/gpu_bench.py),
#   4. run the benchmark suites, `python -m benchmarks --quick` (RUN_SH_SKIP_SUITES=1 skips it).
# Results (tests.log, bench.log, layer_norm_bandwidth.{json,md}) go to $1 (if not an option), else $OUT, else
# benchmarks/results/device.
# Extra arguments after the folder go to gpu_bench.py (e.g. --widths 256 4096 --dtypes bfloat16).
# RUN_SH_SKIP_TESTS=1 skips step 2.  `benchmarks/device/run.sh DIR --cpu-smoke` dry-runs both steps on CPU.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR="${OUT:-benchmarks/results/device}"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then OUT_DIR="$1"; shift; fi
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
PY="${PYTHON:-python3}"
SMOKE=0
for a in "$@"; do [ "$a" = "--cpu-smoke" ] && SMOKE=1; done

# 1. rnlib installed the normal way: `pip install -e .` from this checkout, offline (the machine has no network):
#    --no-deps (jax, flax, optax, chex are preinstalled) and --no-build-isolation (setuptools from the machine).
if ! PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 timeout 300 \
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . >"$OUT_DIR/pip_install.log" 2>&1; then
  echo "pip install -e . failed (see $OUT_DIR/pip_install.log)" >&2
  tail -n 20 "$OUT_DIR/pip_install.log" >&2
  exit 3
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

# 4. the project's benchmark suites (norms, train, compile) on this device, quick sizes; skipped in a CPU smoke run.
rc_suites=0
if [ "$SMOKE" = 0 ] && [ "${RUN_SH_SKIP_SUITES:-0}" != 1 ]; then
  echo "== benchmark suites (python -m benchmarks --quick) =="
  timeout "${RUN_SH_SUITES_TIMEOUT:-150}" "$PY" -m benchmarks --quick --out "$OUT_DIR/suites" 2>&1 \
    | tee "$OUT_DIR/suites.log"
  rc_suites=${PIPESTATUS[0]}
fi
echo "tests rc=$rc_tests bench rc=$rc_bench suites rc=$rc_suites; results in $OUT_DIR"
[ "$rc_tests" = 0 ] && [ "$rc_bench" = 0 ]
