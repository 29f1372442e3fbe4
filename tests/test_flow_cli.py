"""`ivr flows check | show | schema` and `ivr simulate`, as a call-center team uses them."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from ivr.cli import main
from ivr.config import DEFAULT_FLOWS_DIR
from ivr.flows.model import json_schema


def run(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input)


@pytest.fixture
def team_flows(tmp_path, monkeypatch):
    """A copy of the shipped flows the test may edit, as FLOWS_DIR."""
    folder = tmp_path / "flows"
    shutil.copytree(DEFAULT_FLOWS_DIR, folder)
    monkeypatch.setenv("FLOWS_DIR", str(folder))
    return folder


@pytest.fixture
def simulation_env(redis_url, redis_client, tmp_path, monkeypatch, team_flows):
    """Settings for a simulated call: a real Redis, an instance folder of the test's own."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path / "instance"))
    monkeypatch.setenv("SECRET_KEY", "simulation-secret-" + "s" * 32)
    monkeypatch.setenv("APP_NAME", "Acme")
    return team_flows


def test_the_shipped_flows_check_clean():
    result = run("flows", "check", str(DEFAULT_FLOWS_DIR))
    assert result.exit_code == 0, result.output
    assert "0 error(s), 0 warning(s)" in result.output


def test_the_published_json_schema_is_current():
    published = json.loads((DEFAULT_FLOWS_DIR / "flow.schema.json").read_text(encoding="utf-8"))
    assert published == json_schema(), "regenerate: ivr flows schema > flows/flow.schema.json"
    assert json.loads(run("flows", "schema").output) == published


@pytest.mark.parametrize(
    ("setting", "typo"), [("max_timeouts", "max_timouts"), ("max_failures", "max_failure")]
)
def test_check_names_the_file_and_line_of_a_schema_error_and_the_setting_meant(
    team_flows, setting, typo
):
    path = team_flows / "default.yaml"
    text = path.read_text(encoding="utf-8")
    assert f"    {setting}: " in text
    text = text.replace(f"    {setting}: ", f"    {typo}: ", 1)
    path.write_text(text, encoding="utf-8")
    line = next(n for n, row in enumerate(text.splitlines(), 1) if f" {typo}:" in row)
    result = run("flows", "check")
    assert result.exit_code == 1
    # The path is the file's (nodes.<id>.<setting>): the node's type is not repeated in it.
    said = (
        f"{path}:{line}: error: nodes.main_menu.{typo}: unknown setting; did you mean '{setting}'?"
    )
    assert said in result.output.splitlines()


def test_check_reports_lint_errors_until_the_flow_is_right(team_flows):
    path = team_flows / "default.yaml"
    original = path.read_text(encoding="utf-8")
    path.write_text(original.replace("      3: opening_hours", "      3: opening_hour"), "utf-8")
    result = run("flows", "check")
    assert result.exit_code == 1
    assert "'opening_hour', which is not a node; did you mean 'opening_hours'?" in result.output
    path.write_text(original, encoding="utf-8")
    assert run("flows", "check").exit_code == 0


def test_check_catches_a_number_claimed_by_two_flows(team_flows):
    for name in ("sales", "support"):
        (team_flows / f"{name}.yaml").write_text(
            'numbers: ["+14155550188"]\nstart: bye\nnodes:\n  bye: {type: hangup}\n',
            encoding="utf-8",
        )
    result = run("flows", "check")
    assert result.exit_code == 1
    assert "+14155550188 is claimed by several flows: sales, support" in result.output


@pytest.mark.parametrize("output", ["text", "mermaid", "dot"])
def test_show_draws_the_default_flow(output):
    result = run("flows", "show", "default", "--format", output)
    assert result.exit_code == 0, result.output
    assert "main_menu" in result.output and "authenticate_caller" in result.output
    if output == "mermaid":
        assert result.output.startswith("flowchart TD")
    if output == "dot":
        assert result.output.startswith("digraph")


def test_show_an_unknown_flow_says_so_and_lists_the_flows_there_are(team_flows):
    for name in ("support", "sales"):
        (team_flows / f"{name}.yaml").write_text(
            "start: bye\nnodes:\n  bye: {type: hangup}\n", encoding="utf-8"
        )
    result = run("flows", "show", "nothing-here")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"no flow 'nothing-here' in {team_flows} (FLOWS_DIR)",
        "flows there: default, sales, support",
    ]
    assert run("flows", "show", "suport").stderr.startswith(
        f"no flow 'suport' in {team_flows} (FLOWS_DIR); did you mean 'support'?\n"
    )


def test_show_in_a_folder_without_flows_says_it_holds_none(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWS_DIR", str(tmp_path))
    result = run("flows", "show", "default")
    assert result.exit_code == 1
    assert f"{tmp_path} (FLOWS_DIR) holds no flow files (*.yaml)" in result.stderr


def test_simulate_walks_a_caller_through_keypad_authentication_to_the_queue(simulation_env):
    imported = simulation_env.parent / "customers.csv"
    imported.write_text("id,phone,name,sms\n12345678,+14155550161,Ada Lovelace,yes\n")
    assert run("customers", "import", str(imported)).exit_code == 0
    result = run("simulate", "default", "--from", "+14155550161", "--keys", "1,1,code")
    assert result.exit_code == 0, result.output
    assert "ending in 6 1" in result.output
    assert "are verified" in result.output
    assert "-> waits in queue 'support'" in result.output
    assert "verified=True" in result.output and "customer_id=12345678" in result.output


def test_simulate_is_interactive_without_keys(simulation_env):
    result = run("simulate", input="2\n\n\n\n")
    assert result.exit_code == 0, result.output
    assert "Para español" in result.output
    assert "Gracias por su llamada. Adiós." in result.output


def test_simulate_interactive_prompt_says_code_types_the_received_code(simulation_env):
    imported = simulation_env.parent / "customers.csv"
    imported.write_text("id,phone,name,sms\n12345678,+14155550161,Ada Lovelace,yes\n")
    assert run("customers", "import", str(imported)).exit_code == 0
    result = run("simulate", "default", "--from", "+14155550161", input="1\nabc\n1\ncode\n")
    assert result.exit_code == 0, result.output
    assert "keys (Enter for silence, 'code' to type the code the phone received):" in (
        result.stdout
    )
    assert "'abc': keys are 0-9, * and #, or 'code'" in result.stderr
    assert "presses: abc" not in result.stdout, "asked again, never pressed"
    assert "are verified" in result.stdout


def test_simulate_refuses_keys_a_phone_cannot_press(simulation_env):
    result = run("simulate", "--keys", "1,a")
    assert result.exit_code == 2
    assert "keys are 0-9, * and #" in result.output


def test_simulate_refuses_a_configuration_with_a_real_twilio_account(simulation_env, monkeypatch):
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "AC" + "1" * 32)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "x" * 32)
    monkeypatch.setenv("TWILIO_CALLER_ID", "+14155550100")
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://ivr.example.test")
    result = run("simulate", "--keys", "1")
    assert result.exit_code == 2
    assert "runs against a development setup" in result.output


def test_a_saved_edit_is_served_without_a_restart(make_app, team_flows):
    app = make_app(flows_dir=str(team_flows))
    library = app.extensions["ivr"].flows.library
    path = team_flows / "default.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(
        text.replace("      9: main_menu_again", "      8: goodbye\n      9: main_menu_again")
    )
    library.refresh(force=True)  # what the next request does once a second has passed
    assert "8" in library.get("default").nodes["main_menu"].options


def test_a_new_menu_option_with_a_new_spanish_prompt_goes_live_without_a_restart(
    make_app, team_flows, tmp_path
):
    """The issue's "done when": edit the default flow (a new option and its prompt), check it
    until it is right, and the running server serves it."""

    from ivr.config import DEFAULT_PROMPTS_DIR
    from ivr.simulator import PhoneSimulator
    from tests.conftest import AUTH_TOKEN, CALLER_ID, PUBLIC_BASE_URL

    prompts = tmp_path / "voice_prompts"
    shutil.copytree(DEFAULT_PROMPTS_DIR, prompts)
    app = make_app(flows_dir=str(team_flows), voice_prompts_dir=str(prompts))
    flow = team_flows / "default.yaml"
    flow.write_text(
        flow.read_text(encoding="utf-8")
        .replace("      9: main_menu_again", "      4: branches\n      9: main_menu_again")
        .replace(
            "  goodbye:\n",
            "  branches:\n    type: hangup\n    prompt: flow.branches\n\n  goodbye:\n",
        ),
        encoding="utf-8",
    )
    checked = run("flows", "check", str(team_flows))
    assert checked.exit_code == 1
    assert "prompt 'flow.branches'" in checked.output
    for locale, text in (
        ("en-US", "Our branches open at nine."),
        ("es-ES", "Abrimos a las nueve."),
    ):
        catalog = prompts / f"{locale}.yaml"
        catalog.write_text(
            catalog.read_text(encoding="utf-8") + f"  flow.branches: {text}\n", encoding="utf-8"
        )
    # What the next request does once a second has passed: look at the folders again.
    app.extensions["ivr"].prompts.refresh(force=True)
    app.extensions["ivr"].flows.library.refresh(force=True)
    phone = PhoneSimulator(app, AUTH_TOKEN)
    transcript = phone.call(
        f"{PUBLIC_BASE_URL}/voice/incoming", from_="+14155550123", to=CALLER_ID, keys=["2", "4"]
    )
    assert transcript.spoken[-1] == "Abrimos a las nueve."


def test_simulate_an_unknown_flow_names_the_flows_served(simulation_env):
    result = run("simulate", "defualt", "--keys", "")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "no flow 'defualt' is served; did you mean 'default'?",
        "flows served: default",
    ]
