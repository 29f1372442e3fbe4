"""What the simulator's calls hear: a live call the version live right now (whatever this
worker last looked at), a draft call the flow's draft and the prompt drafts, frozen for the
call's whole length."""

from __future__ import annotations

import pytest

from tests.console_helpers import make_user, session_csrf, sign_in

CALLER = "+14155550123"


@pytest.fixture
def viewer(simulated_app):
    make_user(simulated_app, "vera", "viewer")
    return sign_in(simulated_app, "vera")


def place_call(client, **fields):
    response = client.post(
        "/console/simulator/calls",
        json={"flow": "default", "caller": CALLER, **fields},
        headers={"X-CSRF-Token": session_csrf(client)},
    )
    assert response.status_code == 201, response.text
    return response.json


def press(client, call_sid, keys):
    response = client.post(
        f"/console/simulator/calls/{call_sid}/keys",
        json={"keys": keys},
        headers={"X-CSRF-Token": session_csrf(client)},
    )
    assert response.status_code == 200, response.text
    return response.json


def heard(answer) -> str:
    return " ".join(event.get("text", "") for event in answer["events"])


def draft_prompt(app, locale: str, key: str, old: str, new: str) -> None:
    versions = app.extensions["ivr"].prompts.published
    live = versions.live(locale)
    assert old in live.text
    text = live.text.replace(old, new)
    versions.save_draft(locale, text, author="eddie", base=live.number, now_ms=0)


def test_a_draft_call_says_the_prompt_drafts_and_a_live_call_does_not(simulated_app, viewer):
    draft_prompt(simulated_app, "en-US", "flow.welcome", "Thank you for calling", "Welcome to")
    page = viewer.get("/console/simulator").text
    assert 'value="default|draft"' in page  # no flow draft, but there are prompt drafts
    assert "prompt drafts of en-US" in page
    assert "Thank you for calling Acme" in heard(place_call(viewer))
    tried = place_call(viewer, version="draft")
    assert "Welcome to Acme" in heard(tried)
    # The next turns of the same call say the drafts too, even once the draft has changed.
    draft_prompt(simulated_app, "en-US", "flow.main_menu.long", "For help", "For HELP")
    answer = press(viewer, tried["call_sid"], "1")
    assert "For help with your account" in heard(answer)
    state = simulated_app.extensions["ivr"].flows.states.load(tried["call_sid"])
    assert state.prompts_revision.startswith("trial:")


def test_a_live_call_runs_the_version_live_now_even_before_this_worker_looked(
    simulated_app, viewer
):
    library = simulated_app.extensions["ivr"].flows.library
    live = library.versions.live("default")
    text = live.text.replace(
        "      9: main_menu_again\n", "      4: goodbye\n      9: main_menu_again\n"
    )
    assert text != live.text
    # Published by another host: this app's library has not polled the generation yet.
    published = library.versions.publish("default", text, author="other-host", comment="")
    call = place_call(viewer)
    state = simulated_app.extensions["ivr"].flows.states.load(call["call_sid"])
    assert state.flow_revision == str(published.number)
    press(viewer, call["call_sid"], "1")
    assert "Thank you for calling. Goodbye." in heard(press(viewer, call["call_sid"], "4"))
