"""Issue 8: live progress. Plain lines off a terminal, a rich bar on one, nothing when quiet."""

from __future__ import annotations

import io
import re

import pandas as pd
import yaml
from conftest import digits_config

from orchestrator.records.history import History
from orchestrator.records.progress import Progress
from orchestrator.tools.cli import main


def _feed(progress: Progress) -> History:
    """A short run's worth of rows, through a real History as the run loop records them."""
    history = History()
    history.listeners.append(progress.on_event)
    history.record("evaluation", version=0, accuracy=0.1, loss=2.3, in_flight=0)
    history.record("dispatch", participant="a-0", task_id=0, version=0, in_flight=1)
    history.record("dispatch", participant="a-1", task_id=1, version=0, in_flight=2)
    history.record("dispatch", participant="a-2", task_id=2, version=0, in_flight=3)
    history.record("update", participant="a-0", task_id=0, version=0, staleness=0, in_flight=2)
    history.record("dropout", participant="a-1", task_id=1, version=0, in_flight=1)
    history.record("aggregation", version=1, staleness=0, in_flight=1)
    history.record("evaluation", version=1, accuracy=0.5, loss=1.5, in_flight=1)
    history.record("timeout", participant="a-2", task_id=2, version=1)
    history.record("dispatch", participant="a-0", task_id=3, version=1, in_flight=1)
    history.record("update", participant="a-0", task_id=3, version=2, staleness=2, in_flight=0)
    history.record("aggregation", version=2, staleness=2, in_flight=0)
    history.record("evaluation", version=2, accuracy=0.75, loss=0.9, in_flight=0)
    return history


def test_plain_lines_off_a_terminal_show_round_accuracy_and_seconds():
    out = io.StringIO()  # not a terminal, like a CI log
    progress = Progress(stream=out, total=5)
    assert progress.live is False
    history = _feed(progress)
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == (history.frame().event == "evaluation").sum() == 3
    last = lines[-1]
    assert "agg    2/5" in last and "acc 0.7500" in last
    assert re.search(r"staleness\s+2\b", last) and re.search(r"failures\s+2\b", last)
    seconds = float(re.search(r"([\d.]+)s$", last).group(1))
    assert seconds == round(history.rows[-1]["time"], 1)
    assert "\x1b[" not in out.getvalue()  # no terminal escape codes in a log


def test_live_bar_on_a_terminal_shows_the_same_numbers():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    progress = Progress(stream=out, total=5)
    assert progress.live is True
    _feed(progress)
    progress.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # drop colours/cursor moves
    final = text.strip().splitlines()[-1]
    assert "2/5" in final and "acc 0.7500" in final
    assert "in flight 0" in final and "staleness 2" in final and "failures 2" in final
    assert "agg " not in text  # no plain lines mixed into the bar


def test_cli_run_prints_progress_lines_and_quiet_silences_them(ray_session, tmp_path, capsys):
    config = digits_config(
        groups=[{"name": "site", "count": 2, "model": {"name": "mlp", "hidden": [16]},
                 "resources": {"num_cpus": 0.5}, "hosting": "pool"}],
        stop={"max_aggregations": 2},
    )
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))

    assert main(["run", str(path), "--out", str(tmp_path / "loud")]) == 0
    out = capsys.readouterr().out
    history = pd.read_parquet(tmp_path / "loud" / "history.parquet")
    progress_lines = [ln for ln in out.splitlines() if ln.startswith("  agg ")]
    assert len(progress_lines) == (history.event == "evaluation").sum() == 3
    assert "final_accuracy" in out and "summary" in out  # the end-of-run table

    assert main(["run", str(path), "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out == f"results in {tmp_path / 'quiet'}/\n"  # no progress, notices or summary
