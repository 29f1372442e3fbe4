"""The flow page's node form, as a browser submits it: settings into the flow's draft, the
texts of the node's prompts into their locales' prompt drafts, all or nothing."""

from __future__ import annotations

import pytest
from werkzeug.datastructures import MultiDict

from tests.console_helpers import form_fields, make_user, session_csrf, sign_in

NODE_PAGE = "/console/flows/default?node=main_menu"
NODE_FORM = "/console/flows/default/nodes/main_menu"


@pytest.fixture
def editor(app):
    make_user(app, "eddie", "editor")
    return sign_in(app, "eddie")


def submitted(client, changes: dict[str, str]) -> list[tuple[str, str]]:
    """The node form as it stands, with `changes` typed into it."""
    fields = form_fields(client.get(NODE_PAGE).text, "node-settings")
    return [(name, changes.get(name, value)) for name, value in fields]


def post_form(client, fields: list[tuple[str, str]]):
    return client.post(NODE_FORM, data=MultiDict(fields))


def drafts(app):
    services = app.extensions["ivr"]
    return services.flows.library.versions.draft("default"), services.prompts.published.drafts()


def test_the_node_form_shows_each_prompt_text_in_every_language(editor):
    page = editor.get(NODE_PAGE).text
    assert "What callers hear for flow.main_menu.long" in page
    assert 'name="prompt_text:flow.main_menu.long:de-DE"' in page
    assert "For help with your account" in page


def test_a_prompt_text_changed_in_the_node_form_goes_to_its_locale_draft_only(app, editor):
    new_text = "For your account, press 1. Lost card, 2. Hours, 3. Repeat, 9."
    response = post_form(
        editor, submitted(editor, {"prompt_text:flow.main_menu.short:en-US": new_text})
    )
    assert response.status_code == 302, response.text
    assert "prompts=en-US" in response.location
    page = editor.get(response.location).text
    assert "prompt draft of en-US" in page
    flow_draft, prompt_drafts = drafts(app)
    assert flow_draft is None  # the node itself did not change
    assert set(prompt_drafts) == {"en-US"}
    assert new_text in prompt_drafts["en-US"].text
    assert "# Prompts for US English" in prompt_drafts["en-US"].text  # comments kept
    (entry,) = app.extensions["ivr"].audit.entries(limit=1)
    assert (entry.action, entry.target) == ("prompt.draft", "en-US:flow.main_menu.short")


def test_a_menu_option_and_a_prompt_text_are_saved_together(app, editor):
    text = "Press 1 for your account, 2 for a lost card, 3 to say goodbye."
    fields = [
        (name, "goodbye" if (name, value) == ("options.target", "opening_hours") else value)
        for name, value in submitted(editor, {"prompt_text:flow.main_menu.short:en-US": text})
    ]
    response = post_form(editor, fields)
    assert response.status_code == 302, response.text
    flow_draft, prompt_drafts = drafts(app)
    assert "3: goodbye" in flow_draft.text
    assert text in prompt_drafts["en-US"].text


def test_a_refused_prompt_text_saves_nothing_and_says_why(app, editor):
    fields = submitted(
        editor,
        {
            "prompt_text:flow.main_menu.short:fr-FR": "Pour {nobody}, tapez 1.",
            "max_failures": "2",
        },
    )
    response = post_form(editor, fields)
    assert response.status_code == 422
    assert "unknown variable(s) nobody" in response.text
    assert drafts(app) == (None, {})


def test_an_untranslated_prompt_left_empty_stays_untranslated(app, editor):
    fields = submitted(editor, {})
    assert post_form(editor, fields).status_code == 302
    assert drafts(app) == (None, {})


def test_viewers_see_the_texts_read_only(app):
    make_user(app, "vera", "viewer")
    viewer = sign_in(app, "vera")
    page = viewer.get(NODE_PAGE).text
    assert 'name="prompt_text:flow.main_menu.long:en-US" rows="2" readonly' in page


def test_a_prompt_draft_is_shown_against_the_live_version(app, editor):
    new_text = "For your account, press 1. Lost card, 2. Hours, 3. Repeat, 9."
    post_form(editor, submitted(editor, {"prompt_text:flow.main_menu.short:en-US": new_text}))
    assert "See the changes in en-US" in editor.get("/console/prompts").text
    page = editor.get("/console/prompts/en-US/diff").text
    changed = [
        line for line in page.splitlines() if 'class="added"' in line or 'class="removed"' in line
    ]
    assert changed == [
        '<span class="removed">-    For account help, press 1. Lost or stolen card, 2.'
        " Opening hours, 3. To repeat, press 9.</span>",
        f'<span class="added">+    {new_text}</span>',
    ]
    assert "No changes" in editor.get("/console/prompts/de-DE/diff").text
    assert editor.get("/console/prompts/xx-YY/diff").status_code == 404


def test_prompts_are_rolled_back_like_flows(app, editor):
    """Published prompt versions are listed per locale; a rollback publishes a copy of the old
    one (its texts and recordings) and callers hear it at once."""
    original = "For account help, press 1."
    post_form(editor, submitted(editor, {"prompt_text:flow.main_menu.short:en-US": "Press 1."}))
    editor.post(
        "/console/prompts/en-US/publish",
        data={"csrf_token": session_csrf(editor), "comment": "shorter"},
    )
    prompts = app.extensions["ivr"].prompts
    assert prompts.text("en-US", "flow.main_menu.short") == "Press 1."
    page = editor.get("/console/prompts/en-US/history").text
    assert "shorter" in page and "Roll back the en-US prompts to version 1" in page
    response = editor.post(
        "/console/prompts/en-US/rollback/1", data={"csrf_token": session_csrf(editor)}
    )
    assert "Rolled back: version 3" in editor.get(response.location).text
    assert prompts.text("en-US", "flow.main_menu.short").startswith(original)
    (entry,) = app.extensions["ivr"].audit.entries(limit=1)
    assert (entry.action, entry.after) == ("prompt.rollback", {"version": 3, "copy_of": 1})
    missing = editor.post(
        "/console/prompts/en-US/rollback/99", data={"csrf_token": session_csrf(editor)}
    )
    assert missing.status_code == 404


@pytest.mark.parametrize("node_id", ["agent_verified", "card_team"])
def test_hand_off_nodes_round_trip_through_their_form_unchanged(app, editor, node_id):
    """An agent node (attributes) and a transfer node (caller_id now among its settings)
    saved as the form shows them change nothing."""
    page = f"/console/flows/default?node={node_id}"
    fields = form_fields(editor.get(page).text, "node-settings")
    assert fields, "the form is shown"
    response = editor.post(f"/console/flows/default/nodes/{node_id}", data=MultiDict(fields))
    assert response.status_code == 302, response.text
    assert drafts(app) == (None, {}), "nothing changed, so no draft"
