#!/usr/bin/env bash
# The GPU checks of issue 11 in one run (for a session lent a device machine; about 8 minutes on one H200).
# Usage there:  bash scripts/gpu_check.sh   (writes its logs and results under ${OUT:-/tmp/gpu-check})
# 1. the tests marked cuda, then the whole test suite with CUDA present;  2. the default suite on the GPU,
# gated against the CPU baseline;  3. the flow benchmarks (GPU batch throughput).  Each step has its own
# timeout so that one slow step leaves the others their time.
set -uo pipefail
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 || echo "install failed (see install.log)"
python3 -c "import torch, verifier; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" | tee "$out/device.txt"
timeout 120 python3 -m pytest -q -m cuda tests 2>&1 | tail -25 | tee "$out/cuda_tests.log"
timeout 150 python3 -m pytest -q -x -n 8 -p no:cacheprovider 2>&1 | tail -25 | tee "$out/all_tests.log"
( time timeout 150 verifier run --device cuda --no-progress --out /tmp/gpu-run ) 2>&1 | tail -15 | tee "$out/run.log"
cp /tmp/gpu-run/results.json "$out/results.json" 2>/dev/null
verifier gate --baseline verifier/baselines/default.json /tmp/gpu-run/results.json 2>&1 | tee -a "$out/run.log"
timeout 90 python3 -m pytest -q benchmarks/test_flow_bench.py --benchmark-enable -k "batch_against" \
    --benchmark-json "$out/bench.json" 2>&1 | tail -15 | tee "$out/bench.log"
