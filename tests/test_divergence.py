"""The divergence stop, in-process: which arrivals count as diverged, when the run stops,
and the one line it stops with."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator.config import load_config
from orchestrator.loop.run import Orchestrator
from orchestrator.loop.stopping import DIVERGENCE_WINDOW, Divergence, diverged, divergence_message
from strategies.types import Layout, Update

LAYOUT = Layout(("w",), ((3,),))


def update(loss: float = 0.5, payload: tuple[float, ...] = (0.0, 1.0, 2.0), steps: float = 12.0) -> Update:
    return Update("a", 0, "delta", np.asarray(payload, np.float32), LAYOUT, 10,
                  metrics={"train_loss": loss, "steps": steps})


def test_a_non_finite_loss_or_payload_is_divergence():
    assert not diverged(update())
    assert diverged(update(loss=math.nan)) and diverged(update(loss=math.inf))
    assert diverged(update(payload=(0.0, math.nan, 1.0)))
    sealed = Update("a", 0, "delta", np.zeros(0, np.float32), LAYOUT, 10, metrics={"train_loss": math.nan, "steps": 3})
    assert diverged(sealed)  # secure aggregation: only the receipt's loss tells
    assert not diverged(update(loss=math.nan, steps=0))  # no step taken (no rows): nothing blew up


def test_the_run_stops_once_most_of_a_full_window_diverged():
    watch = Divergence()
    for i in range(DIVERGENCE_WINDOW - 1):
        watch.observe(f"c-{i % 4}", diverged=True, loss=math.nan, steps=12)
        assert not watch.stopping  # a window not yet full: too early to tell
    watch.observe("c-1", diverged=True, loss=math.nan, steps=12)
    assert watch.stopping
    assert watch.reason(77.53, "lower train.lr or set preprocess.standardize_target") == (
        "training diverged at participant c-0 (loss became NaN after 12 steps); the target's std is 77.53: "
        "lower train.lr or set preprocess.standardize_target")


def test_one_bad_participant_of_four_does_not_stop_the_run():
    watch = Divergence()
    for i in range(10 * DIVERGENCE_WINDOW):
        watch.observe(f"c-{i % 4}", diverged=i % 4 == 3, loss=math.nan if i % 4 == 3 else 0.3, steps=5)
        assert not watch.stopping
    for _ in range(DIVERGENCE_WINDOW // 2 + 1):  # then most of them blow up
        watch.observe("c-0", diverged=True, loss=math.inf, steps=5)
    assert watch.stopping and watch.reason(None, "lower train.lr") == (
        "training diverged at participant c-3 (loss became NaN after 5 steps): lower train.lr")


@pytest.mark.parametrize(("preprocess", "hint"), [
    ({"standardize": True, "standardize_target": False}, "lower train.lr or set preprocess.standardize_target"),
    (None, "lower train.lr or add preprocess: {standardize: true}"),
    ({"standardize": True}, "lower train.lr"),  # its target is standardized: the lr is left
])
def test_the_stop_line_names_the_fix_the_config_lacks(tmp_path, preprocess, hint):
    (tmp_path / "c.csv").write_text("x,y\n1,2\n3,4\n")
    raw = {"task": "regression", "groups": [{"name": "c", "count": 2, "data": {
        "source": "file", "path": str(tmp_path / "c.csv"), "label_column": "y"}}],
        "evaluation": {"path": str(tmp_path / "c.csv"), "label_column": "y"}}
    if preprocess is not None:
        raw["preprocess"] = preprocess
    orchestrator = Orchestrator(load_config(raw))  # nothing started: the loop's decision alone
    for _ in range(DIVERGENCE_WINDOW):
        orchestrator.divergence.observe("c-1", diverged=True, loss=math.nan, steps=7)
    assert divergence_message(orchestrator.divergence, orchestrator.config, orchestrator.global_model) == f"training diverged at participant c-1 (loss became NaN after 7 steps): {hint}"
