#!/bin/sh
# Checks to run on a machine with an NVIDIA GPU, in at most 8 minutes. On CUDA, through the real
# server: the standard request and a 1,000-image RGB request end to end, and the job throughput
# with one and with several jobs at once. Then the demo tasks in float32 and in bfloat16, the
# tests that need CUDA, and the test suite.
# Usage: sh scripts/gpu_check.sh   (after `make install`; writes logs and result tables under
# ${OUT:-/tmp}/gpu-check)
# Each step has a time limit (in seconds: 20 + 90 + 120 + 60 + 60 + 120 = 470), so a slow step
# cuts itself short instead of the steps after it. A step that runs out prints what it measured
# so far to its log but appends no table.
set -e
out="${OUT:-/tmp}/gpu-check"
mkdir -p "$out"
py=.venv/bin/python
step() {  # step SECONDS LOG COMMAND...: run COMMAND with a time limit, output to the screen and LOG
    limit=$1 log=$2
    shift 2
    { timeout -k 5 "$limit" "$@" || echo "exit status $? (124 means over the $limit s limit)"; } 2>&1 | tee "$out/$log"
}
step 20 versions.txt $py -c "import torch, onnxruntime; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'); print('onnxruntime providers', onnxruntime.get_available_providers())"
# The standard request and a 1,000-image RGB request end to end on CUDA, phase by phase.
step 90 requests.txt $py benchmarks/standard_requests.py --output "$out/benchmarks.md"
# Eight standard requests with one job at a time, then with as many as --max-concurrent-jobs auto picks.
step 120 concurrent.txt $py benchmarks/concurrent_jobs.py --jobs 8 --concurrent auto --output "$out/benchmarks.md"
# The same two demo tasks in float32 and in bfloat16: held-out accuracy and request time.
step 60 precision.txt $py benchmarks/demo_task.py --seeds 2 --precision float32,bfloat16 --output "$out/benchmarks.md"
# The tests that skip without CUDA: no per-step host waits, the probe of one job's GPU memory.
step 60 cuda-tests.txt $py -m pytest -q tests/test_progress.py tests/test_precision.py tests/test_concurrency.py
# The test suite last, so the timings above come back even when the machine's time runs out.
step 120 tests.txt $py -m pytest -q -x tests
