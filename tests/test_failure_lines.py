"""Start failures are reported one line per cause, with a count, not once per participant."""

from __future__ import annotations

from orchestrator.records.progress import one_line_per_cause


def test_a_thousand_participants_failing_alike_are_one_line():
    errors = [(f"site-{i}", f"participant site-{i}: could not start: ValueError: cannot reshape array of size 0")
              for i in range(1000)]
    errors.insert(500, ("site-x", "participant site-x: data file not found: /data/site_x.csv"))
    assert one_line_per_cause(errors) == [
        "participant site-0: could not start: ValueError: cannot reshape array of size 0 "
        "(and 999 more participants alike: site-1, site-2, site-3, ...)",
        "participant site-x: data file not found: /data/site_x.csv",
    ]


def test_different_files_stay_different_causes():
    errors = [(f"c-{i}", f"participant c-{i}: data file not found: /d/c_{i}.csv") for i in range(2)]
    assert one_line_per_cause(errors) == [message for _, message in errors]
