"""make bench's verdicts (bench/report.py), on made-up samples: no server is started here, and
nothing is timed."""

from __future__ import annotations

import argparse

from bench import report, runner
from bench.loadgen import Sample
from bench.workload import REVEALS_PER_CALL


def _samples(*rps: float, p99_latency: float = 0.010, status: int = 200) -> list[Sample]:
    """One sample per round, each of 100 requests at `rps` (its p99 at `p99_latency`)."""
    made = []
    for value in rps:
        sample = Sample(seconds=100 / value)
        sample.latencies.extend([0.005] * 98 + [p99_latency] * 2)
        sample.statuses[status] = 100
        made.append(sample)
    return made


def _peers(tutorial: float) -> dict[str, dict]:
    return {
        "static": report.summarize(_samples(4000, 4000), 200),
        "tutorial": report.summarize(_samples(tutorial, tutorial), 200),
    }


def test_a_webhook_passes_at_the_ratio_with_steady_rounds():
    ours = report.summarize(_samples(900, 880, 870), 200)
    verdict = report.judge(ours, _peers(1000), "tutorial")
    assert verdict["ratios"] == {"static": 0.22, "tutorial": 0.88}
    assert verdict["pass"], verdict


def test_one_slow_round_fails_steady_though_the_median_holds():
    ours = report.summarize(_samples(900, 890, 880, 600), 200)
    assert ours["steady"] == round(600 / 885, 3)
    verdict = report.judge(ours, _peers(1000), "tutorial")
    assert verdict["checks"] == {"ratio": True, "p99": True, "steady": False, "errors": True}


def test_below_the_ratio_a_slow_p99_or_an_error_fails():
    slow = report.summarize(_samples(800, 800, p99_latency=0.045), 200)
    assert report.judge(slow, _peers(1000), "tutorial")["checks"]["ratio"] is False
    assert report.judge(slow, _peers(1000), "tutorial")["checks"]["p99"] is False
    refused = report.summarize(_samples(900, 900, status=503), 200)
    assert report.judge(refused, _peers(1000), "tutorial")["checks"]["errors"] is False


def test_the_pools_last_the_whole_run():
    args = argparse.Namespace(
        feed_rps=2500,
        rounds=10,
        seconds=3.0,
        sends_per_number=3,
        call_numbers=None,
        check_numbers=None,
    )
    runner._size_pools(args)
    reveals = args.call_numbers * args.sends_per_number * REVEALS_PER_CALL
    assert reveals >= 2500 * 10 * 3
    assert args.check_numbers * int(runner.OTP_MAX_ATTEMPTS) >= 2500 * 10 * 3
