#!/usr/bin/env bash
# What a lent GPU machine lacks, taken there in parts. The device tool sends the checkout plus
# at most 64 MiB a call, the machine keeps /tmp while it stays warm (30 s after a call), and
# onnxruntime-gpu alone is ~195 MB compressed; the machine has Python 3.12, PyTorch, numpy,
# onnx, sentencepiece and pytest, but not onnxruntime-gpu nor the gRPC extras.
#
#   bash bench/gpu_carry.sh pack          # here: builds .carry/part-* and prints the calls to make
#   bash bench/gpu_carry.sh keep PART     # there, one call per part, back to back: keeps it in /tmp
#   bash bench/gpu_carry.sh unpack        # there, in the last call: assembles /tmp/carry
#
# What is carried: onnxruntime-gpu (cp312, its C API library and TensorRT provider left out:
# the Python module needs neither), the gRPC and logging wheels the service needs, the default
# model's newest version exported again in fp16 (through the parity gate, on this machine's
# CPU), and the test split. After `unpack`, run with
#   export PYTHONPATH=/tmp/carry/site:$PWD:$PWD/protos
set -euo pipefail
CARRY=.carry
STAGE=$CARRY/stage
PART_MB=${PART_MB:-37}  # the tracked files (~26 MB) travel with each part, within 64 MiB
# The versions this checkout's environment runs, for Python 3.12.
CARRIED=(onnxruntime-gpu grpcio grpcio-health-checking grpcio-reflection protobuf python-json-logger)

pack() {
  local py=${PYTHON:-.venv/bin/python}
  local model
  model=models/en-es/$(ls models/en-es | sort -n | tail -n 1)
  [ -f data/en-es/test.tsv ] || { echo "data/en-es/test.tsv is missing: run make data" >&2; exit 1; }
  rm -rf "$CARRY" && mkdir -p "$STAGE/site" "$STAGE/wheels" "$STAGE/data"
  local pinned
  read -r -a pinned <<< "$("$py" -c "import sys; from importlib.metadata import version as v
print(' '.join(f'{n}=={v(n)}' for n in sys.argv[1:]))" "${CARRIED[@]}")"
  local platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
                   --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$CARRY/download" "${pinned[0]}"
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$STAGE/wheels" "${pinned[@]:1}"
  (cd "$STAGE/site" && unzip -q ../../download/onnxruntime_gpu-*.whl \
    && rm onnxruntime/capi/libonnxruntime.so.* onnxruntime/capi/libonnxruntime_providers_tensorrt.so)
  "$py" -m export.cli "$model" --repository "$STAGE/fp16" --precision fp16 --test data/en-es/test.tsv \
    --parity-sentences 64 > /dev/null
  cp data/en-es/test.tsv "$STAGE/data/"
  tar -C "$STAGE" -c . | xz -9 -T0 | split -b "${PART_MB}M" - "$CARRY/part-"
  rm -rf "$STAGE" "$CARRY/download"
  local parts=("$CARRY"/part-*)
  echo "${#parts[@]} parts ($(du -sh "$CARRY" | cut -f1)); the device calls, back to back:"
  for part in "${parts[@]::${#parts[@]}-1}"; do
    echo "  run(command='bash bench/gpu_carry.sh keep $part', carry=['$part'], timeout_s=120)"
  done
  local last=${parts[-1]}
  echo "  run(command='bash bench/gpu_carry.sh keep $last && bash bench/gpu_carry.sh unpack &&" \
       "export PYTHONPATH=/tmp/carry/site:\$PWD:\$PWD/protos FP16_REPO=/tmp/carry/fp16 && PYTHON=python3 bash bench/cuda_check.sh" \
       "\$OUT 2>&1 | tee \$OUT/cuda_check.log', carry=['$last'], timeout_s=540)"
}

keep() {
  mkdir -p /tmp/carry/parts && cp "$1" /tmp/carry/parts/
  echo "kept $(ls /tmp/carry/parts | wc -l) parts ($(du -sh /tmp/carry/parts | cut -f1))"
}

unpack() {
  cat /tmp/carry/parts/part-* | xz -d | tar -x -C /tmp/carry
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/carry/site \
    /tmp/carry/wheels/*.whl
  mkdir -p data/en-es && cp /tmp/carry/data/test.tsv data/en-es/
  echo "unpacked: $(PYTHONPATH=/tmp/carry/site python3 -c 'import onnxruntime as o; print(o.__version__, o.get_available_providers())')"
}

case "${1:-}" in
  pack) pack ;;
  keep) keep "$2" ;;
  unpack) unpack ;;
  *) echo "usage: $0 pack | keep PART | unpack" >&2; exit 2 ;;
esac
