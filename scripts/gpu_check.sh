#!/bin/sh
# Checks to run on a machine with an NVIDIA GPU: the test suite, then one adaptation of the
# demo task on CUDA through the real server, compared with the same request on the CPU.
# Usage: sh scripts/gpu_check.sh   (after `make install`; writes logs under ${OUT:-/tmp}/gpu-check)
set -e
out="${OUT:-/tmp}/gpu-check"
mkdir -p "$out"
py=.venv/bin/python
$py -c "import torch, onnxruntime; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'); print('onnxruntime providers', onnxruntime.get_available_providers())" | tee "$out/versions.txt"
$py -m pytest -q -x tests 2>&1 | tail -5 | tee "$out/tests.txt"
for device in cuda cpu; do
    rm -f "$out/port-$device"
    $py -m server --port 0 --port-file "$out/port-$device" --device "$device" > "$out/server-$device.log" 2>&1 &
    server=$!
    while [ ! -s "$out/port-$device" ]; do sleep 1; done
    start=$(date +%s)
    $py -m archadapt_client adapt --server "127.0.0.1:$(cat "$out/port-$device")" \
        --data examples/fashion-mnist/support.npz --out "$out/model-$device.onnx" > "$out/adapt-$device.txt" 2>/dev/null
    echo "$device: request to model in $(( $(date +%s) - start )) s" | tee -a "$out/summary.txt"
    kill -TERM "$server"
    wait "$server" || true
done
grep -h "total\|validation accuracy" "$out"/adapt-*.txt | tee -a "$out/summary.txt"
