#!/usr/bin/env bash
# The checks that need a GPU, in one run: on a machine whose onnxruntime-gpu can load its CUDA
# provider (CUDA 13, cuDNN 9), from the repository root, with the project's Python environment.
#
#     bash bench/cuda_check.sh [results-folder]       # default: bench/results/cuda
#
# 1. which providers load, and the one line the runtime gives where CUDA cannot;
# 2. tests/test_runtime.py on CUDA: greedy and beam equal the PyTorch reference, with the cache
#    kept on the GPU (I/O binding) and copied through host memory;
# 3. the committed default model on CUDA passes the reload gate (its CPU-recorded probes replay
#    token for token), and its held-out translations on CUDA against those on the CPU;
# 4. rosetta-serve --device cuda answers a translation and reports CUDAExecutionProvider;
# 5. bench/decode_speed.py --device cuda: the PyTorch reference and our runtime on the GPU.
# Each step reports and the script goes on; it exits non-zero if any step failed.
# DEVICE=cpu runs the same steps on the CPU: a dry run of the script on a machine without a GPU.
# BENCH=0 leaves out step 5 (minutes), for a quick check of a new model or runtime change.
set -u
RESULTS=${1:-bench/results/cuda}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
MODEL=models/en-es/$(ls models/en-es | sort -n | tail -n 1)  # the newest committed version
mkdir -p "$RESULTS"
failed=()
step() { echo; echo "=== $1 ($(date -u +%H:%M:%S))"; }
check() { "$@" || failed+=("$*"); }

step "providers"
check "$PY" -c "
import onnxruntime as ort
from server.runtime import cuda_unavailable_reason
print('onnxruntime', ort.__version__, ort.get_available_providers())
print('CUDA provider:', cuda_unavailable_reason() or 'usable')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

step "runtime tests on $DEVICE"
check "$PY" -m pytest -q -p no:cacheprovider tests/test_runtime.py --device "$DEVICE"

step "default model: reload gate on $DEVICE"
check "$PY" -m pytest -q -p no:cacheprovider tests/test_default_model.py -k accept --device "$DEVICE"

step "default model: held-out translations, $DEVICE against cpu"
"$PY" -c "
import json
from model.tsv import write_tsv
pairs = json.load(open('$MODEL/probes.json'))['heldout']['pairs']
write_tsv('$RESULTS/heldout.tsv', [tuple(p) for p in pairs])"
for beam in 1 4; do
  for device in cpu "$DEVICE"; do
    check "$PY" -m export.evaluate --model "$MODEL" --test "$RESULTS/heldout.tsv" --beam $beam \
      --device $device --output "$RESULTS/heldout-$device-beam$beam.txt"
  done
  same=$(paste -d '\t' "$RESULTS/heldout-cpu-beam$beam.txt" "$RESULTS/heldout-$DEVICE-beam$beam.txt" \
         | awk -F '\t' '$1 == $2' | wc -l)
  echo "beam $beam: $same of $(wc -l < "$RESULTS/heldout-cpu-beam$beam.txt") translations identical on $DEVICE and cpu"
done

step "rosetta-serve --device $DEVICE"
"$PY" -m server.main --repository models --device "$DEVICE" --port 0 --metrics-port 0 > "$RESULTS/serve.out" \
  2> "$RESULTS/serve.err" &
server=$!
for _ in $(seq 120); do grep -q '"port"' "$RESULTS/serve.out" 2>/dev/null && break; sleep 0.5; done
port=$("$PY" -c "import json; print(json.loads(open('$RESULTS/serve.out').readline())['port'])" 2>/dev/null)
if [ -n "$port" ]; then
  check "$PY" -m client.cli --server "localhost:$port" "Open the file and save your changes."
  check "$PY" -c "
from client.translator import TranslatorClient
with TranslatorClient('localhost:$port') as c:
    for m in c.models(): print(m)"
else
  failed+=("rosetta-serve --device $DEVICE did not start"); tail -20 "$RESULTS/serve.err"
fi
kill -TERM $server 2>/dev/null; wait $server; echo "server exit code $?"

if [ "${BENCH:-1}" = 0 ]; then echo; echo "decode speed: left out (BENCH=0)"
else
step "decode speed on $DEVICE"
# The random models need a tokenizer (unused by the workload): the default model's, so that no corpus is needed.
check "$PY" bench/decode_speed.py --device "$DEVICE" --out "$RESULTS/decode_speed.json" \
  --tokenizer "$MODEL/tokenizer.model" --tokenizer-corpus "$RESULTS/heldout.tsv" ${BENCH_ARGS:-}
fi

echo
if [ ${#failed[@]} -gt 0 ]; then printf 'FAILED: %s\n' "${failed[@]}"; exit 1; fi
echo "all CUDA checks passed"
