"""deploy/prometheus-alerts.yml: well-formed, naming only metrics /metrics serves, and (where
promtool is installed) accepted by Prometheus, with the subtle rules unit-tested."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus-alerts.yml"
EVENTS_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _rules() -> list[dict]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_every_rule_is_an_alert_with_a_severity_and_words_for_the_operator():
    rules = _rules()
    assert len(rules) >= 10
    names = [rule["alert"] for rule in rules]
    assert len(set(names)) == len(names), "alert names are unique"
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"page", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]


def test_every_metric_an_alert_names_is_served(make_app):
    app = make_app(
        events_webhook_url="https://app.example.test/hooks", events_webhook_secret=EVENTS_SECRET
    )
    served = set(re.findall(r"^# TYPE (\w+) (\w+)", app.test_client().get("/metrics").text, re.M))
    names = set()
    for name, kind in served:
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        if kind == "counter" and not name.endswith("_total"):
            names.add(f"{name}_total")
    for rule in _rules():
        for metric in re.findall(r"\bivr_\w+", rule["expr"]):
            assert metric in names, f"{rule['alert']}: {metric} is not served"


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (apt-get install prometheus): only parsed")
    return found


def test_promtool_accepts_the_rules():
    checked = subprocess.run(  # noqa: S603 - Prometheus' own checker on a file of ours
        [_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


# Series as Prometheus would scrape them: a send that never finished (a worker died) against
# sends that come and go; and an outbox whose first event waits.
UNIT_TESTS = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'ivr_code_sends_started_total{{instance="a",channel="sms"}}'
        values: '0+1x30'
      - series: 'ivr_code_sends_finished_total{{instance="a",channel="sms",result="accepted"}}'
        values: '0+1x30'
      - series: 'ivr_code_sends_started_total{{instance="b",channel="sms"}}'
        values: '0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1'
      - series: 'ivr_events_oldest_due_age_seconds{{instance="a"}}'
        values: '0 60 120 180 240 300 360 420 480 540'
    alert_rule_test:
      - eval_time: 20m
        alertname: IvrSendsStuckRequested
        exp_alerts:
          - exp_labels: {{severity: warning, instance: b}}
            exp_annotations:
              summary: "1 code send(s) left `requested` on b"
              description: "A worker died mid-send (or Redis failed after Twilio took it): {see}"
      - eval_time: 9m
        alertname: IvrEventsStuck
        exp_alerts:
          - exp_labels: {{severity: page, instance: a}}
            exp_annotations:
              summary: "The events outbox is not being delivered"
              description: "An event has been due for over 5 minutes: no events thread claims it."
      - eval_time: 6m
        alertname: IvrEventsStuck
        exp_alerts: []
"""


def test_promtool_fires_the_stuck_send_and_stuck_outbox_alerts_only_when_stuck(tmp_path):
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(UNIT_TESTS.format(rules=RULES, see="see the log."), encoding="utf-8")
    tested = subprocess.run(  # noqa: S603
        [_promtool(), "test", "rules", str(tests)], capture_output=True, text=True, timeout=60
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
