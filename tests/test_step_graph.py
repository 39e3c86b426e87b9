"""bench/step_graph.py, the first piece of the engine's CUDA-graph design: a decoder step whose
shapes are fixed and whose inputs and outputs are bound once computes what the runtime's step
computes, reads its inputs where they are changed in place, and with the cache append bound the
same way decodes on as the runtime would. Checked here on the CPU; the GPU check script
(bench/cuda_check.sh) runs the same checks with both graphs captured as CUDA graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.step_graph import BoundStep, bucket_inputs, check, dimensions, measure
from server.runtime import OnnxGraphs, SessionConfig, create_session, versions

MODELS = Path(__file__).resolve().parent.parent / "models" / "en-es"


@pytest.fixture(scope="module")
def graphs() -> OnnxGraphs:
    return OnnxGraphs(MODELS / str(versions(MODELS)[-1]), SessionConfig(device="cpu", streams=1))


@pytest.mark.parametrize("rows, beams", [(1, 1), (6, 1), (8, 4)])
def test_a_bound_fixed_shape_step_answers_as_the_runtime_step(graphs, rows, beams):
    rng = np.random.default_rng(rows)
    feeds = bucket_inputs(graphs, rows, beams, capacity=16, source_length=9, rng=rng)
    assert dimensions(feeds) == {"batch": rows, "capacity": 16, "sources": rows // beams, "source_len": 9,
                                 "query_group": 2 if beams == 1 else 4, "candidates": 2 * beams}
    check(BoundStep(graphs, feeds, cuda_graph=False), graphs, feeds, rng)  # raises where they differ


def test_the_check_catches_a_step_that_does_not_read_its_changed_inputs(graphs):
    rng = np.random.default_rng(0)
    feeds = bucket_inputs(graphs, 8, 1, capacity=16, source_length=9, rng=rng)
    step = BoundStep(graphs, feeds, cuda_graph=False)
    step.update = lambda name, value: None  # what a graph replaying its recorded inputs would do
    with pytest.raises(AssertionError, match="after the tokens changed in place"):
        check(step, graphs, feeds, rng)


def test_the_check_catches_an_append_that_does_not_write_the_cache(graphs):
    rng = np.random.default_rng(1)
    feeds = bucket_inputs(graphs, 4, 1, capacity=16, source_length=9, rng=rng)
    step = BoundStep(graphs, feeds, cuda_graph=False)
    step.append = lambda: None
    with pytest.raises(AssertionError, match="the append did not write"):
        check(step, graphs, feeds, rng)


def test_a_cuda_graph_is_refused_where_the_step_does_not_run_on_cuda(graphs):
    with pytest.raises(ValueError, match="needs the CUDA provider"):
        create_session(graphs.dir / graphs.manifest.graphs["decoder"], SessionConfig(device="cpu"), cuda_graph=True)


def test_a_bucket_is_timed_after_its_check(graphs):
    figure = measure(graphs, 4, 1, 16, 9, cuda_graph=False)
    assert "error" not in figure, figure
    assert figure["ms_per_step"] > 0 and figure["ms_per_token"] > 0
    assert figure["tokens_per_s"] == pytest.approx(4 / figure["ms_per_token"] * 1e3)


def test_a_setting_that_cannot_run_is_reported_with_its_cause_not_raised(graphs):
    figure = measure(graphs, 2, 1, 16, 9, cuda_graph=True)  # no CUDA provider here
    assert figure["setting"] == "cuda graph" and "needs the CUDA provider" in figure["error"]
    assert "ms_per_step" not in figure
