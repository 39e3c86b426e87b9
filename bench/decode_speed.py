"""Decoding speed of every engine on the fixed workload (../shared/bench/workload.toml).

    .venv/bin/python bench/decode_speed.py                      # all archs and engines
    .venv/bin/python bench/decode_speed.py --archs small --engines pytorch onnxruntime-fp32

For each architecture a random model is built from its config with the workload's seed,
saved as a checkpoint and exported through `rosetta-export`'s own code path (fp32 and int8,
each through the parity gate on a few sentences), so every engine runs the same weights. Each
engine setting runs in its own worker process (its own thread pools and peak-memory figure) over
the same source ids, generating exactly `target_length` tokens per sentence (EOS suppressed).
Within the workload's thread budget, CTranslate2 runs in four settings (CT2_SETTINGS) and our
runtime in two (ORT_SETTINGS: one stream of 2 threads, two streams of 1); each is reported at its best.

Timing: per mode, one warm-up pass, then `timed_reps` passes; the median is reported with min
and max. The passes of all of an architecture's workers take turns (one pass each, in an order
rotated every round, the others idle meanwhile), so a drift of the machine's speed falls on every
engine alike: run one engine after another, a shared machine that sped up 1.5x within a quarter
of an hour (2026-12-01) favoured whichever engines ran last. Around each pass the CPU time of
other processes is read from /proc/stat; a pass during which they used more than a fifth of one
core is repeated (up to 3 times) and flagged if still disturbed.

On a GPU (`--device cuda`) the engines are the PyTorch reference on CUDA and our runtime on the
CUDA provider at fp32, fp16 and int8, each with its key/value cache kept on the GPU through I/O
binding and, for comparison, copied through host memory at every step (SessionConfig.device_cache).
CTranslate2 is CPU-only here: its CUDA build needs CUDA 12.

Results: printed as a table, and written as JSON (bench/results/latest.json by default) with,
for each arch, engine and mode, tokens/s and the ratios to the PyTorch reference and to
CTranslate2 at the same precision.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD = ROOT.parent / "shared" / "bench" / "workload.toml"
ENGINES = ["pytorch", "onnxruntime-fp32", "onnxruntime-int8", "ctranslate2-fp32", "ctranslate2-int8"]
# On request (--engines): both sides with a vocabulary shortlist built from --tokenizer-corpus,
# ours exported with it (docs/export.md), CTranslate2's as its vmap.txt of the same lists.
SHORTLIST_ENGINES = ["onnxruntime-fp32-shortlist", "ctranslate2-fp32-vmap"]
CUDA_ENGINES = ["pytorch", "onnxruntime-fp32", "onnxruntime-fp16", "onnxruntime-int8"]
# CTranslate2 is timed in each of these settings (back-end, intra-op threads) and reported at its
# best per mode: its default 2-thread MKL setting is far from its best on these machines.
CT2_SETTINGS = [("mkl", 2), ("onednn", 2), ("mkl", 1), ("onednn", 1)]
# Our runtime likewise, within the same 2-thread budget: (streams, intra-op threads per stream).
ORT_SETTINGS = [(1, 2), (2, 1)]
# On CUDA: where the key/value cache lives between steps (the I/O binding lever, measured).
ORT_CUDA_SETTINGS = {"device cache": True, "host cache": False}
DISTURBED_CORE_SHARE = 0.2
# Before each pass: long enough for an idle worker's OpenMP threads to stop spinning (Intel's
# OpenMP, under MKL, spins 200 ms after its work by default).
SETTLE_SECONDS = 0.3
REPLY = "@decode_speed "  # a worker's answers on stdout start with this; libraries may print too


# --- the workload ---------------------------------------------------------------------------
def load_workload(path: Path) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


def workload_sources(workload: dict, eos_id: int, first_regular_id: int = 4) -> list[list[int]]:
    """The workload's source sentences: random regular ids, then EOS."""
    spec = workload["inputs"]
    rng = np.random.default_rng(spec["seed"])
    ids = rng.integers(first_regular_id, workload["vocab"]["size"], (spec["num_sentences"], spec["source_length"]))
    return [row.tolist() + [eos_id] for row in ids]


# --- preparing the models -------------------------------------------------------------------
def prepare_arch(workload: dict, arch: str, cache: Path, tokenizer_corpus: Path, tokenizer_path: Path | None = None,
                 precisions: tuple[str, ...] = ("fp32", "int8")) -> Path:
    """Checkpoint and exported versions (`precisions`) of the arch's random model, built once.

    The tokenizer is trained on `tokenizer_corpus` unless a trained one is given; the workload
    never uses it, but a checkpoint carries one. The corpus's first pairs feed the parity gate.
    """
    import torch

    from export.cli import ShortlistSettings, export_version
    from model.checkpoint import save_checkpoint
    from model.config import ModelConfig
    from model.tokenizer import Tokenizer
    from model.transformer import Transformer
    from model.tsv import read_tsv

    # Keyed by the code that makes the graphs too (the export's and the model's that it traces): a
    # change to the graphs or the quantizer rebuilds the versions.
    sources = sorted((ROOT / "export").glob("*.py")) + [ROOT / "model" / "transformer.py", ROOT / "model" / "attention.py"]
    export_code = hashlib.sha256(b"".join(p.read_bytes() for p in sources))
    arch_dir = cache / f"{arch}-v{workload['version']}-{export_code.hexdigest()[:10]}"
    arch_dir.mkdir(parents=True, exist_ok=True)
    with open(arch_dir / ".lock", "w") as lock:  # another run building the same models waits for it
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = [p for p in precisions if not (arch_dir / "models" / p / "1" / "manifest.json").exists()]
        if not missing:
            return arch_dir
        spec = workload["archs"][arch]
        pairs, _ = read_tsv(tokenizer_corpus)
        if not (arch_dir / "checkpoint").exists():
            tokenizer = (Tokenizer.load(tokenizer_path) if tokenizer_path else
                         Tokenizer.train((t for pair in pairs for t in pair), vocab_size=workload["vocab"]["size"]))
            torch.manual_seed(spec["model_seed"])
            config = ModelConfig(vocab_size=workload["vocab"]["size"], d_model=spec["d_model"], heads=spec["heads"],
                                 ffn=spec["ffn"], encoder_layers=spec["encoder_layers"],
                                 decoder_layers=spec["decoder_layers"], dropout=0.0)
            model = Transformer(config).eval()
            save_checkpoint(arch_dir / "checkpoint", model, tokenizer, {"source_lang": "en", "target_lang": "es"})
        for variant in missing:
            print(f"[{arch}] exporting {variant}", file=sys.stderr, flush=True)
            precision, _, shortlisted = variant.partition("-")
            shortlist = ShortlistSettings(tokenizer_corpus) if shortlisted else None
            version_dir, report = export_version(arch_dir / "checkpoint", arch_dir / "models", variant, pairs[:16],
                                                 precision=precision, beam_sizes=(1,), shortlist=shortlist)
            if version_dir is None:
                raise SystemExit(f"{arch} {precision}: export failed its parity gate: {report.failures}")
    return arch_dir


# --- timing ---------------------------------------------------------------------------------
def _cpu_jiffies() -> tuple[int, int]:
    """(all busy jiffies of the machine, busy jiffies of this process)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(v) for v in fields) - int(fields[3]) - int(fields[4])  # minus idle and iowait
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return busy, int(own[11]) + int(own[12])  # utime + stime


def timed_pass(run: Callable[[], None]) -> tuple[float, float]:
    """Seconds of one pass, and the other processes' CPU use during it in cores."""
    busy0, own0 = _cpu_jiffies()
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    busy1, own1 = _cpu_jiffies()
    ticks = os.sysconf("SC_CLK_TCK")
    others = max(0, (busy1 - busy0) - (own1 - own0)) / ticks / seconds
    return seconds, others


def mode_pass(decode: Callable[[list[list[int]], int, int], None], sentences: list[list[int]], mode: dict,
              workload: dict) -> Callable[[], None]:
    """One pass of `mode` over `sentences`, batch by batch, as a call without arguments."""
    def go() -> None:
        for start in range(0, len(sentences), mode["batch"]):
            decode(sentences[start: start + mode["batch"]], mode["beam"], workload["inputs"]["target_length"])
    return go


def figures(times: list[float], flags: list[float], mode: dict, workload: dict) -> dict:
    """A mode's reported figures from its timed passes' seconds and disturbances."""
    median = statistics.median(times)
    tokens = mode["sentences"] * workload["inputs"]["target_length"]
    return {"tokens_per_s": tokens / median, "sentences_per_s": mode["sentences"] / median,
            "ms_per_sentence": 1000 * median / mode["sentences"], "seconds": {"median": median, "min": min(times),
                                                                             "max": max(times)},
            "other_processes_cores": flags, "disturbed": any(f > DISTURBED_CORE_SHARE for f in flags)}


def measure_mode(decode: Callable[[list[list[int]], int, int], None], sources: list[list[int]], mode: dict,
                 workload: dict) -> dict:
    """A mode's figures from passes in this process alone (bench/session_options.py)."""
    timed_pass(mode_pass(decode, sources[: workload["timing"]["warmup_sentences"]], mode, workload))
    times, flags = [], []
    for _ in range(workload["timing"]["timed_reps"]):
        seconds, others = undisturbed(lambda: timed_pass(mode_pass(decode, sources[: mode["sentences"]], mode, workload)))
        times.append(seconds)
        flags.append(round(others, 2))
    return figures(times, flags, mode, workload)


def undisturbed(run: Callable[[], tuple[float, float] | None]) -> tuple[float, float] | None:
    """A timed pass (seconds, other processes' cores), run again, up to 3 times in all, while
    others disturbed it; None if `run` gave none."""
    for _ in range(3):
        result = run()
        if result is None or result[1] <= DISTURBED_CORE_SHARE:
            break
    return result


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM starts afresh at exec, unlike ru_maxrss, which
    a worker would inherit from the (larger) parent that started it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


# --- engines (each built inside its worker process) -----------------------------------------
def engine_decoder(engine: str, arch_dir: Path, threads: tuple[int, int], streams: int = 1, device: str = "cpu",
                   device_cache: bool | None = None) -> Callable[[list[list[int]], int, int], None]:
    """A function decoding a batch of source ids with `engine` on `device` to exactly `length` tokens."""
    from model.search import DecodeOptions

    intra, inter = threads
    if engine == "pytorch":
        import torch

        from model.batching import pad
        from model.checkpoint import load_checkpoint
        from model.decoding import translate_ids

        torch.set_num_threads(intra)
        torch.set_num_interop_threads(inter)
        model = load_checkpoint(arch_dir / "checkpoint").model.to(device)

        def decode(batch: list[list[int]], beam: int, length: int) -> None:
            options = DecodeOptions(beam_size=beam, min_length=length, max_length=length)
            hyps = translate_ids(model, pad(batch).to(device), options)
            assert all(len(h[0].tokens) == length for h in hyps)
        return decode
    if engine.startswith("onnxruntime-"):
        from server.runtime import OnnxGraphs, SessionConfig
        from server.runtime import translate_ids as onnx_translate_ids

        variant = engine.removeprefix("onnxruntime-")  # fp32, int8, fp16 or fp32-shortlist
        graphs = OnnxGraphs(arch_dir / "models" / variant / "1",
                            SessionConfig(device=device, streams=streams, intra_op_threads=intra,
                                          inter_op_threads=inter, device_cache=device_cache))

        def decode(batch: list[list[int]], beam: int, length: int) -> None:
            hyps = onnx_translate_ids(graphs, batch, DecodeOptions(beam_size=beam, min_length=length, max_length=length),
                                      max_batch=len(batch))
            assert all(len(h[0].tokens) == length for h in hyps)
        return decode
    if engine.startswith("ctranslate2-"):
        sys.path.insert(0, str(ROOT / "bench"))
        from ctranslate2_engine import CTranslate2Engine, build_ctranslate2_model, write_vmap

        from model.checkpoint import load_checkpoint

        precision, vmap = engine.split("-")[1], engine.endswith("-vmap")
        ct2_dir = arch_dir / engine
        if not ct2_dir.exists():
            build_ctranslate2_model(load_checkpoint(arch_dir / "checkpoint").model, ct2_dir,
                                    quantization=None if precision == "fp32" else "int8")
            if vmap:
                from server.runtime import SHORTLIST_FILE, Shortlist

                write_vmap(Shortlist.load(arch_dir / "models" / "fp32-shortlist" / "1" / SHORTLIST_FILE), ct2_dir)
        translator = CTranslate2Engine(ct2_dir, compute_type="float32" if precision == "fp32" else "int8",
                                       intra_threads=intra, inter_threads=inter, use_vmap=vmap)

        def decode(batch: list[list[int]], beam: int, length: int) -> None:
            out = translator.translate_ids(batch, beam_size=beam, min_length=length, max_length=length,
                                           batch_size=len(batch))
            assert all(len(ids) == length for ids in out)
        return decode
    raise ValueError(f"unknown engine {engine!r}")


def worker(args: argparse.Namespace) -> None:
    """Time passes on request, one per line on stdin ({"mode": name, "warmup": bool}, or {"rss":
    true} for the peak memory); each answer is one line on stdout after REPLY."""
    workload = load_workload(args.workload)
    decode = engine_decoder(args.engine, args.arch_dir, (args.threads or workload["threads"]["intra_op"],
                                                         workload["threads"]["inter_op"]), args.streams,
                            args.device, {"on": True, "off": False, "auto": None}[args.device_cache])
    sources = workload_sources(workload, eos_id=3)
    modes = {mode["name"]: mode for mode in workload["modes"]}
    print(REPLY + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("rss"):
            answer = {"peak_rss_mb": peak_rss_mb()}
        else:
            mode = modes[request["mode"]]
            count = workload["timing"]["warmup_sentences"] if request["warmup"] else mode["sentences"]
            seconds, others = timed_pass(mode_pass(decode, sources[:count], mode, workload))
            answer = {"seconds": seconds, "others": others}
        print(REPLY + json.dumps(answer), flush=True)


# --- the report -----------------------------------------------------------------------------
class WorkerFailed(RuntimeError):
    """A worker process exited instead of answering; the message is the end of its stderr."""


class Worker:
    """One engine setting in its own process, timing passes when asked."""

    def __init__(self, engine: str, arch_dir: Path, workload: Path, *, threads: int | None = None,
                 env: dict[str, str] | None = None, streams: int = 1, device: str = "cpu",
                 device_cache: str = "auto") -> None:
        command = [sys.executable, __file__, "worker", "--engine", engine, "--arch-dir", str(arch_dir),
                   "--workload", str(workload), "--streams", str(streams), "--device", device,
                   "--device-cache", device_cache] + (["--threads", str(threads)] if threads else [])
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, env={**os.environ, **(env or {})})
        try:
            self._answer()
        except WorkerFailed:
            self.log.close()
            raise

    def ask(self, request: dict) -> dict:
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # it has exited: _answer reads why
        return self._answer()

    def _answer(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY):])
        self.proc.wait()
        self.log.seek(0)
        raise WorkerFailed(self.log.read().strip()[-2000:] or f"exit status {self.proc.returncode}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()
        self.log.close()


def start_worker(label: str, *args, **kwargs) -> Worker | dict:
    """A started worker, or {"error": ...} if it could not start."""
    print(f"  starting {label}", file=sys.stderr, flush=True)
    try:
        return Worker(*args, **kwargs)
    except WorkerFailed as e:
        print(f"  failed: {e}", file=sys.stderr)
        return {"error": str(e).splitlines()[-1:]}


def time_interleaved(workers: dict[str, Worker], workload: dict) -> dict[str, dict]:
    """Each worker's figures per mode; within a mode the workers take turns, a pass each, the
    order rotated every round. A worker that fails reports {"error": ...}; the others go on."""
    results: dict[str, dict] = {name: {} for name in workers}
    live = dict(workers)

    def one_pass(name: str, mode: dict, warmup: bool) -> tuple[float, float] | None:
        if name not in live:
            return None
        try:
            time.sleep(SETTLE_SECONDS)  # idle workers' threads stop spinning before the next pass
            answer = live[name].ask({"mode": mode["name"], "warmup": warmup})
            return answer["seconds"], answer["others"]
        except WorkerFailed as e:
            print(f"  {name} failed: {e}", file=sys.stderr)
            results[name] = {"error": str(e).splitlines()[-1:]}
            live.pop(name).close()
            return None

    for mode in workload["modes"]:
        print(f"  {mode['name']}: warming up {len(live)} workers", file=sys.stderr, flush=True)
        for name in list(live):
            one_pass(name, mode, warmup=True)
        times: dict[str, list[float]] = {name: [] for name in live}
        flags: dict[str, list[float]] = {name: [] for name in live}
        for rep in range(workload["timing"]["timed_reps"]):
            print(f"  {mode['name']}: round {rep + 1} of {workload['timing']['timed_reps']}", file=sys.stderr, flush=True)
            names = list(live)
            for name in names[rep % len(names):] + names[: rep % len(names)] if names else []:
                timed = undisturbed(lambda: one_pass(name, mode, warmup=False))
                if timed is not None:
                    times[name].append(timed[0])
                    flags[name].append(round(timed[1], 2))
        for name in live:
            results[name][mode["name"]] = figures(times[name], flags[name], mode, workload)
    for name, w in live.items():
        results[name]["peak_rss_mb"] = w.ask({"rss": True})["peak_rss_mb"]
        w.close()
    return results


def engine_settings(engine: str, device: str) -> dict[str, dict]:
    """The settings an engine is timed in: name -> Worker keyword arguments ("" for its only one)."""
    if device == "cuda" and engine.startswith("onnxruntime-"):
        return {name: {"device": "cuda", "device_cache": "on" if on else "off"} for name, on in ORT_CUDA_SETTINGS.items()}
    if device == "cuda":
        return {"": {"device": "cuda"}}
    if engine.startswith("ctranslate2-"):
        return {f"{backend}, {threads} thread{'s' * (threads > 1)}":
                {"threads": threads, "env": {"CT2_USE_MKL": "1" if backend == "mkl" else "0"}}
                for backend, threads in CT2_SETTINGS}
    if engine.startswith("onnxruntime-"):
        return {f"{streams} stream{'s' * (streams > 1)} x {threads} thread{'s' * (threads > 1)}":
                {"threads": threads, "streams": streams} for streams, threads in ORT_SETTINGS}
    return {"": {}}


def time_arch(arch: str, arch_dir: Path, engines: list[str], workload_path: Path, workload: dict,
              device: str) -> dict:
    """Every engine's figures for one architecture, at its best setting per mode."""
    settings = {(engine, name): kwargs for engine in engines for name, kwargs in engine_settings(engine, device).items()}
    started = {key: start_worker(f"[{arch}] {key[0]} on {device} {key[1]}", key[0], arch_dir, workload_path, **kwargs)
               for key, kwargs in settings.items()}
    workers = {f"{engine} {name}": w for (engine, name), w in started.items() if isinstance(w, Worker)}
    timed = time_interleaved(workers, workload)
    results = {}
    for engine in engines:
        variants = {name: timed.get(f"{engine} {name}", started[engine, name])
                    for (e, name) in settings if e == engine}
        results[engine] = variants[""] if "" in variants else best_variant(variants)
    return results


def best_variant(variants: dict[str, dict]) -> dict:
    """Per mode, the fastest of an engine's settings, naming the setting and listing all of them."""
    working = {name: figures for name, figures in variants.items() if "error" not in figures}
    if not working:
        return next(iter(variants.values()))
    best: dict = {"peak_rss_mb": max(f["peak_rss_mb"] for f in working.values())}
    modes = [m for m, f in next(iter(working.values())).items() if isinstance(f, dict)]
    for mode in modes:
        name = max(working, key=lambda n: working[n][mode]["tokens_per_s"])
        best[mode] = {**working[name][mode], "setting": name,
                      "settings": {n: round(f[mode]["tokens_per_s"]) for n, f in working.items()}}
    return best


def gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def machine(device: str = "cpu") -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
    libraries = {}
    for name in ("torch", "onnxruntime-gpu", "ctranslate2", "numpy"):
        try:
            libraries[name] = version(name)
        except PackageNotFoundError:
            libraries[name] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "isa": [f for f in wanted if f in flags], "libraries": libraries,
            "python": platform.python_version(), "device": device, "gpu": gpu_name() if device == "cuda" else None}


def ratios(results: dict) -> None:
    """Add, per engine and mode, tokens/s relative to PyTorch and to CTranslate2 at the same precision."""
    for arch in results.values():
        for engine, modes in arch.items():
            if "error" in modes:
                continue
            for mode, figures in modes.items():
                if not isinstance(figures, dict):
                    continue
                for baseline, key in (("pytorch", "vs_pytorch"), (ctranslate2_counterpart(engine), "vs_ctranslate2")):
                    base = arch.get(baseline, {}).get(mode)
                    if isinstance(base, dict):
                        figures[key] = figures["tokens_per_s"] / base["tokens_per_s"]


def ctranslate2_counterpart(engine: str) -> str:
    """The CTranslate2 engine an engine is compared with: the same precision, and the same
    vocabulary reduction (a shortlist against a vmap)."""
    if engine == "pytorch":
        return "ctranslate2-fp32"
    return engine.replace("onnxruntime-", "ctranslate2-").replace("-shortlist", "-vmap")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command")
    w = sub.add_parser("worker", help="(internal) time one engine")
    w.add_argument("--engine", required=True, choices=sorted(set(ENGINES + CUDA_ENGINES + SHORTLIST_ENGINES)))
    w.add_argument("--arch-dir", type=Path, required=True)
    w.add_argument("--workload", type=Path, default=WORKLOAD)
    w.add_argument("--threads", type=int, help="intra-op threads (default: the workload's)")
    w.add_argument("--streams", type=int, default=1, help="onnxruntime: parts of a batch decoded at once")
    w.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    w.add_argument("--device-cache", choices=("auto", "on", "off"), default="auto",
                   help="onnxruntime: keep the key/value cache on the device between steps")
    p.add_argument("--workload", type=Path, default=WORKLOAD)
    p.add_argument("--archs", nargs="*", default=["small", "base"])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: the PyTorch reference and our runtime on the GPU (engines: CUDA_ENGINES)")
    p.add_argument("--engines", nargs="*", choices=sorted(set(ENGINES + CUDA_ENGINES + SHORTLIST_ENGINES)),
                   help=f"default: {' '.join(ENGINES)} (cpu), {' '.join(CUDA_ENGINES)} (cuda); on request "
                        f"{' '.join(SHORTLIST_ENGINES)} (fp32, each with a vocabulary shortlist)")
    p.add_argument("--tokenizer", type=Path, help="a trained tokenizer for the random models, instead of "
                                                   "training one on --tokenizer-corpus")
    p.add_argument("--cache", type=Path, default=ROOT / "bench" / ".cache", help="random models and their exports")
    p.add_argument("--tokenizer-corpus", type=Path, default=ROOT / "data" / "en-es" / "train.tsv",
                   help="TSV to train the models' (unused by the workload, but exported) tokenizer on")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = p.parse_args()
    if args.command == "worker":
        worker(args)
        return
    workload = load_workload(args.workload)
    engines = args.engines or (CUDA_ENGINES if args.device == "cuda" else ENGINES)
    precisions = tuple(p for p in ("fp32", "fp16", "int8", "fp32-shortlist")
                       if f"onnxruntime-{p}" in engines or (p == "fp32-shortlist" and "ctranslate2-fp32-vmap" in engines))
    results: dict = {}
    for arch in args.archs:
        arch_dir = prepare_arch(workload, arch, args.cache, args.tokenizer_corpus, args.tokenizer, precisions)
        results[arch] = time_arch(arch, arch_dir, engines, args.workload, workload, args.device)
    ratios(results)
    report = {"workload": str(args.workload), "workload_version": workload["version"], "machine": machine(args.device),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)


def print_table(report: dict) -> None:
    print(f"{report['machine']['cpu']} ({', '.join(report['machine']['isa'])})"
          + (f", GPU {report['machine']['gpu']}" if report["machine"].get("gpu") else ""))
    print(f"{'arch':6} {'engine':26} {'mode':11} {'tok/s':>8} {'ms/sent':>8} {'vs torch':>8} {'vs ct2':>7} {'RSS MB':>7}")
    for arch, engines in report["results"].items():
        for engine, modes in engines.items():
            if "error" in modes:
                print(f"{arch:6} {engine:26} error: {modes['error']}")
                continue
            for mode, f in modes.items():
                if not isinstance(f, dict):
                    continue
                flag = (" (disturbed)" if f["disturbed"] else "") + (f" [{f['setting']}]" if "setting" in f else "")
                print(f"{arch:6} {engine:26} {mode:11} {f['tokens_per_s']:8.0f} {f['ms_per_sentence']:8.1f} "
                      f"{f.get('vs_pytorch', float('nan')):8.2f} {f.get('vs_ctranslate2', float('nan')):7.2f} "
                      f"{modes['peak_rss_mb']:7.0f}{flag}")


if __name__ == "__main__":
    main()
