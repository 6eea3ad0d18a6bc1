"""A participant's private state file: only a missing file may start it afresh.

A torn or foreign file silently replaced by a fresh state would reset the silo's local
DP-SGD budget (and its task count), so loading such a file must fail loudly instead.
"""

from __future__ import annotations

import pickle
import re

import pytest

from actors import private_state


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
