"""Published flow versions in Redis: files seed them, publishes reach every worker, a call
finishes on the version it started with, and rollbacks are new versions."""

from __future__ import annotations

import json
import shutil

import pytest

from ivr.config import DEFAULT_FLOWS_DIR
from ivr.flows.versions import DocumentVersions, StalePublish
from ivr.simulator import PhoneSimulator
from tests.conftest import AUTH_TOKEN, CALLER_ID, PUBLIC_BASE_URL, twilio_post, twiml

CALLER = "+14155550123"
HANGUP = "default: true\nstart: bye\nnodes:\n  bye: {type: hangup, prompt: flow.goodbye}\n"


@pytest.fixture
def team_flows(tmp_path):
    folder = tmp_path / "flows"
    shutil.copytree(DEFAULT_FLOWS_DIR, folder)
    return folder


def test_files_seed_the_first_version_once(make_app, team_flows, redis_client):
    make_app(flows_dir=str(team_flows))
    make_app(flows_dir=str(team_flows))  # a second worker: the same text is not imported again
    versions = DocumentVersions(redis_client, "flows")
    history = versions.history("default")
    assert [v.number for v in history] == [1]
    assert history[0].source == "file"
    assert history[0].text == (team_flows / "default.yaml").read_text(encoding="utf-8")


def test_a_publish_reaches_another_worker_at_its_next_look(make_app, team_flows, redis_client):
    first, second = make_app(flows_dir=str(team_flows)), make_app(flows_dir=str(team_flows))
    library = second.extensions["ivr"].flows.library
    assert library.get("default").start == "welcome"
    DocumentVersions(redis_client, "flows").publish("default", HANGUP, author="alice")
    library.refresh(force=True)  # what the next request does once a second has passed
    assert library.get("default").start == "bye"
    assert library.served("default").revision == "2"
    other = first.extensions["ivr"].flows.library
    other.refresh(force=True)
    assert other.served("default").revision == "2"


def test_a_call_finishes_on_the_version_it_started_with(make_app, team_flows, redis_client):
    app = make_app(flows_dir=str(team_flows))
    client = app.test_client()
    params = {"CallSid": "CA" + "7" * 32, "From": CALLER, "To": CALLER_ID}
    first = twiml(twilio_post(client, "/voice/incoming", params))
    action = first.find("Gather").get("action")
    DocumentVersions(redis_client, "flows").publish("default", HANGUP, author="alice")
    app.extensions["ivr"].flows.library.refresh(force=True)
    menu = twiml(twilio_post(client, action, params | {"Digits": "1"}))
    assert menu.find("Gather") is not None, "the call goes on in version 1"
    fresh = PhoneSimulator(app, AUTH_TOKEN).call(
        f"{PUBLIC_BASE_URL}/voice/incoming", from_=CALLER, to=CALLER_ID
    )
    assert fresh.spoken == ["Thank you for calling. Goodbye."], "a new call gets version 2"


def test_an_edited_file_is_imported_and_a_console_edit_is_not_undone(
    make_app, team_flows, redis_client
):
    app = make_app(flows_dir=str(team_flows))
    library = app.extensions["ivr"].flows.library
    versions = DocumentVersions(redis_client, "flows")
    versions.publish("default", HANGUP, author="alice")
    library.refresh(force=True)
    assert library.get("default").start == "bye", "the untouched file does not win"
    path = team_flows / "default.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("start: welcome", "start: main_menu"))
    library.refresh(force=True)
    assert library.get("default").start == "main_menu", "the newest change wins"
    assert [v.source for v in versions.history("default")] == ["file", "console", "file"]


def test_a_flow_whose_file_is_removed_stops_but_a_console_flow_stays(
    make_app, team_flows, redis_client
):
    (team_flows / "sales.yaml").write_text(HANGUP.replace("default: true\n", ""))
    app = make_app(flows_dir=str(team_flows))
    versions = DocumentVersions(redis_client, "flows")
    versions.publish("promo", HANGUP.replace("default: true\n", ""), author="alice")
    library = app.extensions["ivr"].flows.library
    library.refresh(force=True)
    assert {"default", "sales", "promo"} <= set(library.flows)
    (team_flows / "sales.yaml").unlink()
    library.refresh(force=True)
    assert "sales" not in library.flows
    assert "promo" in library.flows


def test_rollback_publishes_the_old_text_as_a_new_version(redis_client):
    versions = DocumentVersions(redis_client, "flows")
    one = versions.publish("main", "a: 1\n", author="alice", comment="first")
    versions.publish("main", "a: 2\n", author="bob")
    back = versions.rollback("main", one.number, author="carol")
    assert back.number == 3
    assert versions.live("main").text == "a: 1\n"
    assert versions.live("main").source == "rollback"
    assert [v.author for v in versions.history("main")] == ["carol", "bob", "alice"]
    with pytest.raises(LookupError):
        versions.rollback("main", 99, author="carol")


def test_a_publish_over_a_newer_version_is_refused(redis_client):
    versions = DocumentVersions(redis_client, "flows")
    versions.publish("main", "a: 1\n", author="alice")
    versions.publish("main", "a: 2\n", author="bob", expect_live=1)
    with pytest.raises(StalePublish) as refused:
        versions.publish("main", "a: 3\n", author="alice", expect_live=1)
    assert refused.value.live == 2
    assert versions.live("main").text == "a: 2\n"


def test_history_is_capped(redis_client):
    versions = DocumentVersions(redis_client, "flows", history_cap=3)
    for n in range(5):
        versions.publish("main", f"a: {n}\n", author="alice")
    assert [v.number for v in versions.history("main")] == [5, 4, 3]


def test_a_draft_is_kept_apart_and_cleared_by_publish(redis_client):
    versions = DocumentVersions(redis_client, "flows")
    versions.publish("main", "a: 1\n", author="alice")
    versions.save_draft("main", "a: 2\n", author="bob", base=1, now_ms=1)
    assert versions.live("main").text == "a: 1\n", "a draft never serves"
    assert versions.draft("main").text == "a: 2\n"
    versions.publish("main", "a: 2\n", author="bob")
    assert versions.draft("main") is None


def test_a_trial_is_frozen_and_expires(redis_client):
    versions = DocumentVersions(redis_client, "flows")
    trial = versions.save_trial("a: 1\n")
    assert versions.trial(trial) == "a: 1\n"
    assert 0 < redis_client.ttl(f"ivr:{{flows}}:trial:{trial}") <= 4 * 3600


def test_the_files_serve_while_redis_is_away(make_app, team_flows):
    app = make_app(flows_dir=str(team_flows), redis_url="redis://127.0.0.1:1/0")
    assert app.extensions["ivr"].flows.library.get("default").start == "welcome"


def test_flows_import_publishes_checked_files_and_export_writes_them_back(
    make_app, team_flows, redis_client, redis_url, tmp_path, monkeypatch
):
    from click.testing import CliRunner

    from ivr.cli import main

    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path / "instance"))
    monkeypatch.setenv("FLOWS_DIR", str(team_flows))
    make_app(flows_dir=str(team_flows))
    edited = tmp_path / "edited"
    edited.mkdir()
    text = (team_flows / "default.yaml").read_text(encoding="utf-8")
    (edited / "default.yaml").write_text(text.replace("start: welcome", "start: main_menu"))
    runner = CliRunner()
    result = runner.invoke(main, ["flows", "import", str(edited), "--comment", "skip welcome"])
    assert result.exit_code == 0, result.output
    assert "default: version 2 is live" in result.output
    versions = DocumentVersions(redis_client, "flows")
    assert versions.live("default").comment == "skip welcome"
    assert versions.live("default").author.startswith("cli:")
    (edited / "default.yaml").write_text(text.replace("start: welcome", "start: nowhere"))
    refused = runner.invoke(main, ["flows", "import", str(edited)])
    assert refused.exit_code == 1
    assert "nothing was published" in refused.output
    out = tmp_path / "export"
    assert runner.invoke(main, ["flows", "export", str(out)]).exit_code == 0
    assert "start: main_menu" in (out / "default.yaml").read_text(encoding="utf-8")


def test_a_worker_that_skipped_a_version_falls_back_to_the_last_good_one(
    make_app, team_flows, redis_client, caplog
):
    first, second = make_app(flows_dir=str(team_flows)), make_app(flows_dir=str(team_flows))
    versions = DocumentVersions(redis_client, "flows")
    versions.publish("default", HANGUP, author="alice")  # version 2
    first.extensions["ivr"].flows.library.refresh(force=True)
    # Version 3 no longer loads; the second worker never looked at version 2.
    versions.publish("default", HANGUP.replace("start: bye", "start: nowhere"), author="bob")
    for app in (first, second):
        library = app.extensions["ivr"].flows.library
        library.refresh(force=True)
        assert library.served("default").revision == "2", "every worker serves the same one"
        assert "default@3" in library.refused
    assert "version 3 REFUSED, version 2 serves" in caplog.text


def test_a_file_is_published_as_the_text_that_was_checked(make_app, team_flows, redis_client):
    app = make_app(flows_dir=str(team_flows))
    library = app.extensions["ivr"].flows.library
    path = team_flows / "default.yaml"
    checked = path.read_text(encoding="utf-8").replace("start: welcome", "start: main_menu")
    lint = library.files.linter

    def lint_while_an_editor_saves_a_broken_version(*args):
        problems = lint(*args)
        path.write_text(checked.replace("start: main_menu", "start: nowhere"), encoding="utf-8")
        return problems

    library.files.linter = lint_while_an_editor_saves_a_broken_version
    path.write_text(checked, encoding="utf-8")
    library.refresh(force=True)
    assert DocumentVersions(redis_client, "flows").live("default").text == checked
    assert library.get("default").start == "main_menu"


def test_kept_records_are_every_trial_draft_and_version_retired_ones_included(redis_client):
    """What a sweep of recordings reads to know which are named (see ivr.recordings)."""
    versions = DocumentVersions(redis_client, "prompts", history_cap=2)
    for n in (1, 2, 3):
        versions.publish("en-US", f"version {n}\n", author="eddie")  # the first is pruned
    versions.publish("fr-FR", "retired\n", author="eddie")
    versions.retire("fr-FR")
    versions.save_draft("en-US", "draft\n", author="eddie", base=3, now_ms=1)
    trial = versions.save_trial("trial\n")
    trial_text, draft, *kept = versions.kept_records()  # in this order: see its docstring
    assert (trial_text, json.loads(draft)["text"]) == ("trial\n", "draft\n")
    assert sorted(json.loads(text)["text"] for text in kept) == [
        "retired\n",
        "version 2\n",
        "version 3\n",
    ]
    assert 0 < redis_client.pttl("ivr:{prompts}:trials") <= 4 * 3600 * 1000
    redis_client.delete(f"ivr:{{prompts}}:trial:{trial}")  # as when it expires
    assert "trial\n" not in versions.kept_records()
