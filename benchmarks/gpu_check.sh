#!/usr/bin/env bash
# The GPU checks in one command, under 8 minutes on one GPU: the tests whose numerics an
# accelerator changes (convolutions and the fused BatchNorm in true float32 against lax and a
# float64 reference, the models), then the train-step benchmark, written with the device named
# into benchmarks/RESULTS.md and README.md (their gpu blocks; the cpu blocks stay).
# PyTorch's rows are skipped: its reference runs on the CPU, no yardstick for a GPU.
# Run from the repository root or anywhere: bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import sys
import jax
if jax.default_backend() != "gpu":
    sys.exit(f"gpu_check: no GPU visible to jax (backend {jax.default_backend()}); run it on a GPU machine")
print("devices:", jax.devices())
PY
timeout 220 python -m pytest -q -x tests/test_conv.py tests/test_batchnorm.py tests/test_models.py
timeout 220 python -m benchmarks.train_step --no-torch --epoch-repeats 1 --write
