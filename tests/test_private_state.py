"""A participant's private state file: only a missing file may start it afresh.

A torn or foreign file silently replaced by a fresh state would reset the silo's local
DP-SGD budget (and its task count), so loading such a file must fail loudly instead.
"""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest

from actors.participant import private_state


def test_missing_file_or_no_directory_gives_a_fresh_state(tmp_path):
    assert private_state.load(None) == private_state.PrivateState()
    fresh = private_state.load(str(tmp_path / "never-written"))
    assert fresh == private_state.PrivateState() and not fresh.restored


def test_saved_state_round_trips(tmp_path):
    where = str(tmp_path / "p")
    private_state.save(where, private_state.PrivateState(tasks_done=3, last_task_id=7))
    loaded = private_state.load(where)
    assert loaded.restored and (loaded.tasks_done, loaded.last_task_id) == (3, 7)


@pytest.mark.parametrize(
    "content",
    [b"torn", pickle.dumps(private_state.PrivateState(tasks_done=3))[:-5],
     pickle.dumps({"tasks_done": 3}), b""],
    ids=["garbage", "truncated", "foreign-object", "empty"],
)
def test_unreadable_or_foreign_file_raises_naming_the_file(tmp_path, content):
    where = tmp_path / "p"
    where.mkdir()
    path = where / private_state.STATE_FILE
    path.write_bytes(content)
    with pytest.raises(private_state.PrivateStateError, match=re.escape(str(path))):
        private_state.load(str(where))
    assert path.read_bytes() == content  # left as found, for whoever investigates


def _saved(task_id: int, history: list | None = None) -> private_state.PrivateState:
    return private_state.PrivateState(tasks_done=task_id + 1, last_task_id=task_id,
                                      client_state={"c": np.full(2, task_id, np.float32)},
                                      dp_sgd_history=history or [])


def _with_versions(*task_ids: int) -> private_state.PrivateState:
    state = _saved(task_ids[-1], history=[(1.0, 0.1, task_ids[-1])])
    state.earlier = [_saved(t) for t in task_ids[:-1]]
    return state


def test_saves_keep_the_versions_a_resume_may_roll_back_to():
    state = _with_versions(1, 4, 6, 9)
    private_state.prune(state, before=7)  # the checkpoint's version is the one after task 6
    assert [v.last_task_id for v in state.versions()] == [6, 9]
    private_state.prune(state, before=None)  # no checkpoints: only the newest
    assert [v.last_task_id for v in state.versions()] == [9]
    fresh_start = _with_versions(1, 4)
    private_state.prune(fresh_start, before=0)  # before the first task: everything stays
    assert [v.last_task_id for v in fresh_start.versions()] == [1, 4]


def test_a_rollback_takes_the_checkpoints_version_but_keeps_the_budget_spent(tmp_path):
    path = tmp_path / private_state.STATE_FILE
    back = private_state.rolled_back(_with_versions(1, 4, 6, 9), private_state.Rollback(7, 4), "site-0", path)
    assert back.last_task_id == 6 and back.client_state["c"].tolist() == [6.0, 6.0]
    assert back.dp_sgd_history == [(1.0, 0.1, 9)]  # the updates that spent it left the silo
    assert [v.last_task_id for v in back.versions()] == [1, 4, 6]  # later versions dropped
    before_all = private_state.rolled_back(_with_versions(4, 9), private_state.Rollback(2, None), "site-0", path)
    assert before_all.last_task_id == -1 and before_all.client_state == {}  # no task covered: fresh


@pytest.mark.parametrize(("state", "rollback", "message"), [
    (None, private_state.Rollback(7, 4), "does not exist"),
    (_with_versions(1, 2), private_state.Rollback(7, 4), "holds task 2"),
    (_with_versions(5, 6), private_state.Rollback(3, 2), "holds no version that old"),
], ids=["missing", "older", "pruned"])
def test_a_missing_or_older_state_the_checkpoint_expects_is_refused(tmp_path, state, rollback, message):
    path = tmp_path / private_state.STATE_FILE
    with pytest.raises(private_state.PrivateStateError, match=f"participant site-3: .*{message}"):
        private_state.rolled_back(state, rollback, "site-3", path)
    with pytest.raises(private_state.PrivateStateError, match=re.escape(str(path))):
        private_state.rolled_back(state, rollback, "site-3", path)
