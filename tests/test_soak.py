"""The soak (`make soak`) drives a real gunicorn as `make run` starts it: a handful of calls with
short pauses for a few seconds must all complete the default flow with no error. Latency is
not asserted (see docs/performance.md); the report's own deadlines end the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import soak
from bench.soak_calls import STEPS


def test_every_soak_call_completes_the_default_flow_without_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_path = tmp_path / "soak.json"
    status = soak.main(
        [
            "--calls",
            "4",
            "--minutes",
            "0.08",  # ~5 s of new calls, then the ones in progress finish
            "--ramp-seconds",
            "0.5",
            "--pause-seconds",
            "0.05-0.2",
            "--sample-seconds",
            "0.5",
            "--drain-seconds",
            "30",
            "--json",
            str(report_path),
        ]
    )
    report = json.loads(report_path.read_text())
    assert status == 0, capsys.readouterr().out
    calls = report["calls"]
    assert calls["started"] >= 4  # every slot placed at least one call
    assert calls["completed"] == calls["started"]
    assert calls["failed"] == calls["unfinished"] == 0
    assert report["errors"] == 0
    assert report["error_kinds"] == {}
    # Every step of the flow was answered, each call's requests all counted.
    for step in STEPS:
        assert report["latency"]["per_step"][step.name]["requests"] == calls["completed"]
    assert report["samples"], "memory was sampled"
    assert all(sample["app_processes"] >= 2 for sample in report["samples"][:-1])
    assert report["samples"][-1]["redis_used_memory"] > 0
    # What the calls left in Redis all expires: no kind of key without an expiry grew, and the
    # keys without one (the customer directory) are as many as before the calls.
    retained = report["redis_retained"]
    assert retained["grew"], "the census saw the calls' records"
    assert all(kind["expires"] for kind in retained["grew"].values()), retained["grew"]
    assert retained["persistent_keys_after"] == retained["persistent_keys_before"]
    assert retained["expiring_bytes_per_completed_call"] > 0
    assert "redis_working_set" in report["memory"]
