#!/bin/sh
# Checks to run on a machine with an NVIDIA GPU: the standard request and a 1,000-image RGB
# request end to end on CUDA through the real server (benchmarks/standard_requests.py), then the
# test suite.
# Usage: sh scripts/gpu_check.sh   (after `make install`; writes logs under ${OUT:-/tmp}/gpu-check)
set -e
out="${OUT:-/tmp}/gpu-check"
mkdir -p "$out"
py=.venv/bin/python
$py -c "import torch, onnxruntime; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'); print('onnxruntime providers', onnxruntime.get_available_providers())" | tee "$out/versions.txt"
# The standard request and a 1,000-image RGB request end to end on CUDA, phase by phase.
$py benchmarks/standard_requests.py --output "$out/benchmarks.md" 2>&1 | tee "$out/requests.txt"
# The test suite last, so the timings above come back even when the machine's time runs out.
$py -m pytest -q -x tests 2>&1 | tail -5 | tee "$out/tests.txt"
