#!/usr/bin/env bash
# The checks that need a GPU, in one run: on a machine whose onnxruntime-gpu can load its CUDA
# provider (CUDA 13, cuDNN 9), from the repository root, with the project's Python environment.
#
#     bash bench/cuda_check.sh [results-folder]       # default: bench/results/cuda
#
# 1. which providers load, and the one line the runtime gives where CUDA cannot;
# 2. the engine issue's GPU goals (bench/in_flight.py), for the default model's newest version in
#    fp16 (FP16_REPO: a repository holding it, as bench/gpu_carry.sh unpacks one; left out when
#    unset) and fp32: generated tokens/s of real sentences with 1,024 and 4,096 in flight, greedy
#    and beam 4, ms per token one sentence at a time, and the share of 200 sentences translated
#    the same alone and among others; first with the engine on a static cache (StaticEngine: CUDA
#    graphs), then, fp16 only, with the resizing engine;
# 3. a decode loop's token at fixed shapes (the decoder step and the in-place cache append, inputs
#    and outputs bound once), plainly and captured as CUDA graphs, for buckets of 1 to 1,024 rows
#    (bench/step_graph.py; fp16 and fp32): each checked against the runtime's step, then timed:
#    what the engine's CUDA-graph design gains;
# 4. the service on the GPU at 256 concurrent clients against the runtime in-process
#    (bench/grpc_speed.py --device; the committed fp32 version, whose CPU-recorded probes pass
#    the server's gate there);
# 5. tests/test_runtime.py on CUDA: greedy and beam equal the PyTorch reference, with the cache
#    kept on the GPU (I/O binding) and copied through host memory;
# 6. the committed default model on CUDA passes the reload gate (its CPU-recorded probes replay
#    token for token), and its held-out translations on CUDA against those on the CPU;
# 7. rosetta-serve --device cuda answers a translation and reports CUDAExecutionProvider;
# 8. bench/decode_speed.py --device cuda: the PyTorch reference and our runtime on the GPU
#    (BENCH_ARGS, default the small architecture: the workload's exports take minutes).
# The goals come first: a lease is 15 minutes, carrying onnxruntime-gpu there takes a few.
# Each step reports and the script goes on; it exits non-zero if any step failed.
# DEVICE=cpu runs the same steps on the CPU, smaller: a dry run of the script without a GPU.
# BENCH=0 leaves out steps 2, 3, 4 and 8 (minutes), for a quick check of a new model or runtime change.
set -u
RESULTS=${1:-bench/results/cuda}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
MODEL=models/en-es/$(ls models/en-es | sort -n | tail -n 1)  # the newest committed version
mkdir -p "$RESULTS"
WORK=$(mktemp -d)  # what the steps pass on; RESULTS holds only the figures (a few files: a lease returns 8)
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

if [ "$DEVICE" = cuda ]; then
  SCALE=(--sentences 4096 --in-flight 1024 4096 --batch1-sentences 64 --independence 200)
  BUCKETS=(--rows 1 32 256 1024 --beams 1 4)
  SERVICE=(--clients 256 --batch 1024 --texts 1897)
else
  SCALE=(--sentences 64 --in-flight 32 --batch1-sentences 8 --independence 20)
  BUCKETS=(--rows 1 32 --beams 1 4)
  SERVICE=(--clients 8 --batch 32 --texts 64)
fi
if [ "${BENCH:-1}" != 0 ]; then
  step "the engine at scale on $DEVICE"
  FP16=${FP16_REPO:+$FP16_REPO/en-es/$(ls "$FP16_REPO/en-es" 2>/dev/null | sort -n | tail -n 1)}
  [ -n "$FP16" ] || echo "fp16: left out (FP16_REPO unset)"
  precision() { "$PY" -c "import json; print(json.load(open('$1/manifest.json'))['precision'])"; }
  at_scale() {  # VERSION OUTPUT-SUFFIX [--static-cache]
    check "$PY" bench/in_flight.py --device "$DEVICE" --model "$1" "${SCALE[@]}" --beams 1 4 --repeats 1 \
      "${@:3}" --output "$RESULTS/in_flight-$(precision "$1")$2.json"
  }
  # Most telling first, as a lease may end early: the goals on the engine built for them (a
  # static cache, CUDA graphs) in fp16, then what its captured step costs per bucket, then the
  # resizing engine in fp16 and the static one in fp32 (a lease returns 8 files).
  [ -n "$FP16" ] && at_scale "$FP16" -static --static-cache

  step "a token's graphs bound at fixed shapes on $DEVICE (CUDA graphs where the provider is CUDA)"
  for version in $FP16 "$MODEL"; do
    check "$PY" bench/step_graph.py --device "$DEVICE" --model "$version" "${BUCKETS[@]}" \
      --output "$RESULTS/step_graph-$(precision "$version").json"
  done

  step "the engine at scale on $DEVICE: the resizing engine (fp16, else fp32), the static one (fp32)"
  at_scale "${FP16:-$MODEL}" ""
  at_scale "$MODEL" -static --static-cache

  step "the service on $DEVICE against in-process"
  # The committed version: its probes, recorded on the CPU at fp32, pass the server's gate on CUDA.
  check "$PY" bench/grpc_speed.py --device "$DEVICE" "${SERVICE[@]}" \
    --repeats 1 --output "$RESULTS/grpc-$DEVICE.json"
fi

step "runtime tests on $DEVICE"
check "$PY" -m pytest -q -p no:cacheprovider tests/test_runtime.py --device "$DEVICE"

step "default model: reload gate on $DEVICE"
check "$PY" -m pytest -q -p no:cacheprovider tests/test_default_model.py -k accept --device "$DEVICE"

step "default model: held-out translations, $DEVICE against cpu"
"$PY" -c "
import json
from model.tsv import write_tsv
pairs = json.load(open('$MODEL/probes.json'))['heldout']['pairs']
write_tsv('$WORK/heldout.tsv', [tuple(p) for p in pairs])"
for beam in 1 4; do
  for device in cpu "$DEVICE"; do
    check "$PY" -m export.evaluate --model "$MODEL" --test "$WORK/heldout.tsv" --beam $beam \
      --device $device --output "$WORK/heldout-$device-beam$beam.txt"
  done
  same=$(paste -d '\t' "$WORK/heldout-cpu-beam$beam.txt" "$WORK/heldout-$DEVICE-beam$beam.txt" \
         | awk -F '\t' '$1 == $2' | wc -l)
  echo "beam $beam: $same of $(wc -l < "$WORK/heldout-cpu-beam$beam.txt") translations identical on $DEVICE and cpu"
done

step "rosetta-serve --device $DEVICE"
"$PY" -m server.main --repository models --device "$DEVICE" --port 0 --metrics-port 0 > "$WORK/serve.out" \
  2> "$WORK/serve.err" &
server=$!
for _ in $(seq 120); do grep -q '"port"' "$WORK/serve.out" 2>/dev/null && break; sleep 0.5; done
port=$("$PY" -c "import json; print(json.loads(open('$WORK/serve.out').readline())['port'])" 2>/dev/null)
if [ -n "$port" ]; then
  check "$PY" -m client.cli --server "localhost:$port" "Open the file and save your changes."
  check "$PY" -c "
from client.translator import TranslatorClient
with TranslatorClient('localhost:$port') as c:
    for m in c.models(): print(m)"
else
  failed+=("rosetta-serve --device $DEVICE did not start"); tail -20 "$WORK/serve.err"
fi
kill -TERM $server 2>/dev/null; wait $server; echo "server exit code $?"

if [ "${BENCH:-1}" = 0 ]; then echo; echo "decode speed: left out (BENCH=0)"
else
step "decode speed on $DEVICE"
# The random models need a tokenizer (unused by the workload): the default model's, so that no corpus is needed.
check "$PY" bench/decode_speed.py --device "$DEVICE" --out "$RESULTS/decode_speed.json" \
  --tokenizer "$MODEL/tokenizer.model" --tokenizer-corpus "$WORK/heldout.tsv" ${BENCH_ARGS:---archs small}
fi

echo
if [ ${#failed[@]} -gt 0 ]; then printf 'FAILED: %s\n' "${failed[@]}"; exit 1; fi
echo "all CUDA checks passed"
