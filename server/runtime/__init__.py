"""The runtime: model versions served by ONNX Runtime, with neither torch nor gRPC.

Everything that reads a model repository goes through this API: the gRPC service (server/),
the exporter's parity gate and probes (export/), `rosetta-evaluate` and the benchmarks.

    translator = Translator("models/en-es/11")
    translator.translate(["Open the file."], beam_size=4)
    translator.translate_ids(ids, DecodeOptions(beam_size=4), max_batch=32)
    translator.translate_texts(["Click <b>Save</b>."], text_options=TextOptions(format=Format.HTML))
"""

from server.runtime.confidence import Calibration, mean_log_prob
from server.runtime.parity_report import EngineScores, ParityReport, TensorParity, Tolerance, TranslationParity
from server.runtime.repository import (MANIFEST, Manifest, ModelVersionError, file_record, load_manifest,
                                       next_version, sha256_file, versions)
from server.runtime.sessions import CUDA, DeviceUnavailableError, SessionConfig, create_session, cuda_unavailable_reason
from server.runtime.graph_io import cache_names, decoder_names, encoder_names
from server.runtime.graphs import OnnxGraphs
from server.runtime.engine import Result, Scheduler, Sentence, pad_ids, translate_ids
from server.runtime.probes import PROBES_FILE, Heldout, Probe, Probes, replay
from server.runtime.markup import Format
from server.runtime.shortlist import SHORTLIST_FILE, Shortlist
from server.runtime.text import (JobRounds, TextJob, TextOptions, TextReport, TextTranslation, decoding_options,
                                 run_jobs)
from server.runtime.translator import Translation, Translator
from server.runtime.gate import Gate, GateFailure, GateInterrupted, LoadedVersion

__all__ = [
    "CUDA", "Calibration", "DeviceUnavailableError", "EngineScores", "Format", "Gate", "GateFailure",
    "GateInterrupted", "Heldout", "JobRounds", "LoadedVersion", "MANIFEST", "Manifest", "ModelVersionError",
    "OnnxGraphs", "PROBES_FILE", "ParityReport", "Probe", "Probes", "SessionConfig", "TensorParity", "TextJob",
    "TextOptions", "TextReport", "TextTranslation", "Tolerance", "Translation", "TranslationParity",
    "Translator", "cache_names", "create_session", "cuda_unavailable_reason", "decoder_names",
    "decoding_options", "encoder_names", "file_record", "load_manifest", "mean_log_prob", "next_version",
    "pad_ids", "replay", "run_jobs", "sha256_file", "translate_ids", "versions", "Result", "Scheduler", "Sentence",
    "SHORTLIST_FILE", "Shortlist",
]
