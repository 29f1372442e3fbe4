"""The console in a real browser: Debian's chromium, headless, driven by Playwright, against the
app served by gunicorn as `make run` serves it (two workers, the embedded Redis).

Without chromium these tests are skipped with one line saying how to install it; in CI
(CI=true) a missing browser is a failure. Screenshots of each page go to tests/screenshots/
(git-ignored).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WAV = (  # one second of silence, 8 kHz, 16-bit mono
    b"RIFF"
    + (36 + 16000).to_bytes(4, "little")
    + b"WAVEfmt "
    + bytes.fromhex("1000000001000100401f0000803e000002001000")
    + b"data"
    + (16000).to_bytes(4, "little")
    + bytes(16000)
)
SCREENSHOTS = REPO / "tests" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if CHROMIUM is None:
    if os.environ.get("CI") == "true":
        raise RuntimeError(
            "CI needs Debian's chromium for the browser tests: apt-get install chromium"
        )
    pytest.skip(
        "browser tests skipped: no chromium (install it with: apt-get install chromium)",
        allow_module_level=True,
    )

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

from tests.servers import Server, free_port  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """The app as `make run` serves it, in a folder of its own, with its flows copied."""
    from ivr.config import DEFAULT_FLOWS_DIR

    folder = tmp_path_factory.mktemp("console")
    flows = folder / "flows"
    shutil.copytree(DEFAULT_FLOWS_DIR, flows)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "TWILIO_"))}
    env |= {
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "INSTANCE_PATH": str(folder / "instance"),
        "FLOWS_DIR": str(flows),
        "APP_NAME": "Acme",
    }
    command = [sys.executable, "-m", "gunicorn", "--config", "python:ivr.gunicorn_config"]
    server = Server([*command, "ivr:create_app()"], cwd=REPO, env=env, log=folder / "server.log")
    base = f"http://127.0.0.1:{port}"
    try:
        server.wait_until_up(base, 30)
        password = (folder / "instance" / "console_admin_password").read_text().strip()
        yield {"base": base, "password": password, "folder": folder}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, served) -> Iterator[Page]:
    context = browser.new_context(
        base_url=str(served["base"]), viewport={"width": 1400, "height": 900}
    )
    opened = context.new_page()
    problems: list[str] = []
    # Script errors and CSP violations fail a test; a 4xx page (a refused form) is expected.
    opened.on("pageerror", lambda error: problems.append(str(error)))
    opened.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    yield opened
    context.close()
    assert not problems, f"the browser reported errors: {problems}"


DOC_SHOTS = {
    "flows",
    "flow-diagram",
    "node-form-saved",
    "simulator",
    "calls",
    "call-journey",
    "verifications",
    "prompts-recording",
    "customers-import-refused",
    "audit",
}


def shot(page: Page, name: str) -> None:
    """A full-page screenshot under tests/screenshots/; with IVR_DOC_SCREENSHOTS=1, the main
    pages also as small PNGs under docs/console/ for the README."""
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}-view.png"))  # what the user sees now
    if os.environ.get("IVR_DOC_SCREENSHOTS") == "1" and name in DOC_SHOTS:
        folder = REPO / "docs" / "console"
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(
            path=str(folder / f"{name}.png"), clip={"x": 0, "y": 0, "width": 1400, "height": 820}
        )


def sign_in(page: Page, served: dict[str, object]) -> None:
    page.goto("/console/flows")
    expect(page).to_have_url(re.compile(r"/console/sign-in"))
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(str(served["password"]))
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Flows")).to_be_visible()


def test_sign_in_is_the_only_page_for_a_visitor(page, served):
    page.goto("/console/flows/default")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    shot(page, "sign-in")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("username or password is not right")


PAGES = ("Flows", "Simulator", "Verifications", "Calls", "Customers", "Prompts", "Users")


def test_the_navigation_names_every_page(page, served):
    sign_in(page, served)
    navigation = page.get_by_role("navigation", name="Console")
    shot(page, "flows")
    for name in PAGES:
        navigation.get_by_role("link", name=name, exact=True).click()
        expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible()
        shot(page, name.lower())


def test_an_admin_adds_a_viewer_who_sees_no_users_page(page, served, browser):
    sign_in(page, served)
    page.get_by_role("navigation", name="Console").get_by_role("link", name="Users").click()
    page.get_by_label("User name").fill("vera")
    page.get_by_label("Role", exact=True).select_option("viewer")
    page.get_by_role("button", name="Add user").click()
    password = page.locator("code.secret").inner_text()
    page.get_by_role("link", name="Audit log").click()
    expect(page.get_by_role("table", name="Audit log")).to_contain_text("user.create")
    shot(page, "audit")
    assert password not in page.content(), "never a password in the audit log"
    viewer = browser.new_context(base_url=str(served["base"])).new_page()
    viewer.goto("/console/sign-in")
    viewer.get_by_label("Username").fill("vera")
    viewer.get_by_label("Password").fill(password)
    viewer.get_by_role("button", name="Sign in").click()
    navigation = viewer.get_by_role("navigation", name="Console")
    expect(navigation.get_by_role("link", name="Flows")).to_be_visible()
    expect(navigation.get_by_role("link", name="Users")).to_have_count(0)
    viewer.goto("/console/flows/default?node=main_menu")
    expect(viewer.get_by_role("button", name="Save to draft")).to_have_count(0)
    viewer.context.close()


def test_a_csv_import_shows_every_bad_row_and_writes_nothing(page, served, tmp_path):
    sign_in(page, served)
    page.get_by_role("navigation", name="Console").get_by_role("link", name="Customers").click()
    bad = tmp_path / "customers.csv"
    bad.write_text("id,phone,name,sms\n1234,+14155550171,Ada,yes\n12,+1415,Bob,maybe\n")
    page.get_by_label("CSV file").set_input_files(str(bad))
    page.get_by_role("button", name="Import").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Nothing was imported")
    expect(alert).to_contain_text("line 3")
    expect(page.get_by_role("table", name="Customers")).not_to_contain_text("Ada")
    shot(page, "customers-import-refused")


def test_a_supervisor_changes_a_menu_option_publishes_and_rolls_back(page, served):
    sign_in(page, served)
    page.get_by_role("link", name="default", exact=True).click()
    diagram = page.locator("svg.flow-diagram")
    expect(diagram).to_be_visible()
    for node in ("welcome", "main_menu", "identify_caller", "authenticate_caller", "goodbye"):
        expect(diagram.locator("text", has_text=node).first).to_be_visible()
    shot(page, "flow-diagram")

    page.get_by_role("link", name="Edit node main_menu (menu)").click()
    form = page.locator("#node-form")
    expect(form.get_by_role("heading", name="Node main_menu")).to_be_visible()
    # A broken change: option 4 with no target is refused, with its reason.
    form.get_by_label("Key of option 5").select_option("4")
    form.get_by_role("button", name="Save to draft").click()
    expect(page.get_by_role("alert")).to_contain_text("every option needs a key and a target")
    shot(page, "node-form-refused")
    # The real change: option 4 says goodbye.
    form = page.locator("#node-form")
    form.get_by_label("Key of option 5").select_option("4")
    form.get_by_label("Target of option 5").select_option("goodbye")
    # ...and the menu's short prompt says so, in English, in the same form.
    short_prompt = form.get_by_label("flow.main_menu.short in en-US")
    short_prompt.fill(short_prompt.input_value() + " To say goodbye, press 4.")
    form.get_by_role("button", name="Save to draft").click()
    expect(page.get_by_role("status")).to_contain_text("The flow's draft passes every check")
    expect(page.get_by_role("status")).to_contain_text("in the prompt draft of en-US")
    expect(page.locator("svg.flow-diagram .edge-label", has_text="4")).to_have_count(1)
    shot(page, "node-form-saved")

    # The draft can be tried before it is published; the live flow does not have it yet.
    hear_option_4(page, expect_goodbye=True, version="draft")
    hear_option_4(page, expect_goodbye=False)
    # The draft call says the prompt draft too (the menu's short prompt, on a repeat).
    hear_the_short_menu(page, "To say goodbye, press 4.", version="draft")
    page.goto("/console/flows/default")

    page.get_by_role("link", name="Changes").click()
    expect(page.locator("pre.diff .added")).to_contain_text("4: goodbye")
    page.get_by_role("link", name="Diagram").click()
    page.get_by_label("Comment").fill("Option 4 ends the call")
    page.get_by_role("button", name="Publish").click()
    expect(page.get_by_role("status")).to_contain_text("Version 2 is live")
    shot(page, "flow-history")

    # Every worker serves it within a reload interval: a simulated call (its requests spread
    # over both of gunicorn's workers) takes the new option.
    after_a_reload(page, lambda: hear_option_4(page, expect_goodbye=True))
    page.goto("/console/flows/default/history")

    page.get_by_role("button", name="Roll back to version 1").click()
    expect(page.get_by_role("status")).to_contain_text("Rolled back: version 3 is live")
    after_a_reload(page, lambda: hear_option_4(page, expect_goodbye=False))

    # The prompt drafted from the node form is published on the Prompts page, and heard.
    page.goto("/console/prompts")
    expect(page.get_by_role("region", name="Draft of en-US")).to_contain_text("Draft of en-US")
    page.get_by_role("button", name="Publish the en-US prompts").click()
    expect(page.get_by_role("status")).to_contain_text("are live")
    after_a_reload(page, lambda: hear_the_short_menu(page, "To say goodbye, press 4."))


def after_a_reload(page: Page, hear: Callable[[], None], seconds: float = 20) -> None:
    """`hear` a call, again until it passes or `seconds` ran out. A publish reaches each worker
    at its first request a reload interval (a second) after its last look; a call that began
    on a worker that looked just before the publish keeps the version it began with."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            hear()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            hang_up = page.get_by_role("button", name="Hang up")
            if hang_up.is_visible():
                hang_up.click()


def hear_the_short_menu(page: Page, words: str, version: str = "live") -> None:
    """Call the default flow, press 1 (English) then 7 (no such option): the menu's short
    prompt, said on the repeat, has `words`."""
    page.goto("/console/simulator")
    page.get_by_label("Flow").select_option(f"default|{version}")
    page.get_by_role("button", name="Call").click()
    keypad, log = page.get_by_role("group", name="Keypad"), page.get_by_role("log")
    expect(log).to_contain_text("Para español, pulse 2.")
    keypad.get_by_role("button", name="1", exact=True).click()
    expect(log).to_contain_text("For help with your account")
    keypad.get_by_role("button", name="7", exact=True).click()
    expect(log).to_contain_text(words)
    page.get_by_role("button", name="Hang up").click()


def hear_option_4(page: Page, *, expect_goodbye: bool, version: str = "live") -> None:
    """Call the default flow (live or draft) in the simulator; press 1 (English), then 4."""
    page.goto("/console/simulator")
    page.get_by_label("Flow").select_option(f"default|{version}")
    page.get_by_role("button", name="Call").click()
    log = page.get_by_role("log")
    keypad = page.get_by_role("group", name="Keypad")
    expect(log).to_contain_text("Thank you for calling Acme")
    keypad.get_by_role("button", name="1", exact=True).click()
    expect(log).to_contain_text("For help with your account")
    keypad.get_by_role("button", name="4", exact=True).click()
    if expect_goodbye:
        expect(log).to_contain_text("Thank you for calling. Goodbye.")
        expect(page.locator("#sim-status")).to_contain_text("Call ended: hangup")
    else:
        expect(log).to_contain_text("Sorry, that is not one of the options")
        page.get_by_role("button", name="Hang up").click()


def test_the_yaml_view_numbers_lines_and_shows_errors_beside_them(page, served):
    sign_in(page, served)
    page.goto("/console/flows/default/yaml")
    text = page.get_by_label("Flow YAML (saved to the draft, checked on every save)")
    text.fill(text.input_value().replace("start: welcome", "start: welcom"))
    page.get_by_role("button", name="Save to draft").click()
    expect(page.get_by_role("note").first).to_contain_text("start 'welcom' is not a node")
    expect(page.get_by_role("button", name="Publish")).to_have_count(0)
    shot(page, "flow-yaml")
    page.get_by_role("button", name="Discard draft").click()
    expect(page.locator("svg.flow-diagram")).to_be_visible()


def _api(served: dict[str, object], method: str, path: str, body: dict[str, object]) -> int:
    import json

    token = (Path(str(served["folder"])) / "instance" / "api_token").read_text().strip()
    request = urllib.request.Request(
        f"{served['base']}{path}",
        data=json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status


def test_a_simulated_call_reaches_the_agent_verified_with_the_code_from_the_simulated_phone(
    page, served
):
    _api(served, "PUT", "/v1/customers/40001234", {"phone": "+14155550142", "name": "Ana"})
    sign_in(page, served)
    page.get_by_role("navigation", name="Console").get_by_role("link", name="Simulator").click()
    page.get_by_label("Flow").select_option("default|live")
    page.get_by_label("Calling from").fill("+14155550142")
    page.get_by_role("button", name="Call").click()
    log = page.get_by_role("log")
    expect(log).to_contain_text("Thank you for calling Acme")
    keypad = page.get_by_role("group", name="Keypad")
    keypad.get_by_role("button", name="1", exact=True).click()  # English
    expect(log).to_contain_text("For help with your account")
    keypad.get_by_role("button", name="1", exact=True).click()  # account help
    expect(log).to_contain_text("texted a code to your phone")
    message = page.get_by_label("Messages received")
    expect(message).to_contain_text("verification code is")
    code = re.search(r"code is (\d{6})", message.inner_text()).group(1)
    for digit in code:
        keypad.get_by_role("button", name=digit, exact=True).click()
    keypad.get_by_role("button", name="#", exact=True).click()
    expect(log).to_contain_text("are verified")
    expect(log).to_contain_text("Handed to the agent queue support")
    expect(page.locator("#sim-status")).to_contain_text("caller verified")
    expect(page.get_by_role("button", name="Hang up")).to_be_disabled()
    shot(page, "simulator")

    # The call's journey: every node, the code masked, the code sent and checked.
    page.get_by_role("navigation", name="Console").get_by_role("link", name="Calls").click()
    expect(page.get_by_role("heading", name="Calls")).to_be_visible()
    row = page.get_by_role("row").filter(has_text="agent verified").first
    expect(row).to_contain_text("40001234")
    shot(page, "calls")
    row.get_by_role("link").click()
    steps = page.get_by_role("list", name="Steps of the call")
    expect(steps).to_contain_text("authenticate_caller")
    expect(steps).to_contain_text("••••••")
    expect(steps).to_contain_text("code sent")
    expect(steps).to_contain_text("outcome: approved")
    expect(steps).to_contain_text("Ended: agent verified")
    assert code not in page.content(), "a code never appears in the journey"
    shot(page, "call-journey")

    # The dashboard counts it: started, delivered and approved by SMS in the US.
    nav = page.get_by_role("navigation", name="Console")
    nav.get_by_role("link", name="Verifications").click()
    expect(page.locator("#approved-count")).not_to_have_text("0")
    recent = page.get_by_role("table", name="Recent verifications")
    expect(recent.get_by_role("row").filter(has_text="approved").first).to_contain_text("sms")
    assert code not in page.content(), "never a code on the dashboard"
    shot(page, "verifications")


def test_a_prompt_is_edited_drafted_published_and_heard(page, served):
    sign_in(page, served)
    page.goto("/console/prompts")
    page.get_by_role("link", name="Edit flow.welcome in en-US").click()
    page.get_by_label("Text of flow.welcome in en-US").fill("Welcome to {app_name}, {nobody}.")
    page.get_by_role("button", name="Save to draft").click()
    expect(page.get_by_role("alert")).to_contain_text("unknown variable(s) nobody")
    page.get_by_label("Text of flow.welcome in en-US").fill("Welcome to {app_name} banking.")
    page.get_by_role("button", name="Save to draft").click()
    expect(page.get_by_role("status")).to_contain_text("saved to the draft")
    expect(page.get_by_role("region", name="Draft of en-US")).to_be_visible()
    page.get_by_role("button", name="Publish the en-US prompts").click()
    expect(page.get_by_role("status")).to_contain_text("are live")
    shot(page, "prompts-published")
    page.goto("/console/simulator")
    page.get_by_label("Flow").select_option("default|live")
    page.get_by_role("button", name="Call").click()
    expect(page.get_by_role("log")).to_contain_text("Welcome to Acme banking.")
    page.get_by_role("button", name="Hang up").click()


def test_a_recording_is_uploaded_checked_by_its_content_and_played_in_the_page(page, served):
    sign_in(page, served)
    page.goto("/console/prompts")
    page.get_by_role("link", name="Edit flow.opening_hours in en-US").click()
    chooser = page.get_by_label("Recording of flow.opening_hours in en-US (WAV or MP3, up to 5 MB)")
    chooser.set_input_files(
        files=[{"name": "short.mp3", "mimeType": "audio/mpeg", "buffer": b"hello"}]
    )
    page.get_by_role("button", name="Upload recording").click()
    expect(page.get_by_role("alert")).to_contain_text("short.mp3: only WAV and MP3")
    chooser.set_input_files(files=[{"name": "short.wav", "mimeType": "audio/wav", "buffer": WAV}])
    page.get_by_role("button", name="Upload recording").click()
    expect(page.get_by_role("status")).to_contain_text("(en-US, 1 s) was saved to the draft")
    player = page.get_by_label("Draft recording of flow.opening_hours in en-US")
    seconds = player.evaluate(
        "audio => new Promise((resolve, reject) => {"
        " audio.addEventListener('loadedmetadata', () => resolve(audio.duration));"
        " audio.addEventListener('error', () => reject(new Error('not playable')));"
        " audio.load(); })"
    )
    assert seconds == pytest.approx(1.0, abs=0.05)
    player.scroll_into_view_if_needed()
    shot(page, "prompts-recording")
    page.get_by_role("button", name="Discard the en-US draft").click()
    expect(page.get_by_role("status")).to_contain_text("discarded")


def test_the_calls_page_shows_a_new_call_without_a_reload_and_can_be_paused(page, served):
    sign_in(page, served)
    page.goto("/console/calls")
    control = page.locator("#refresh-control")
    expect(control).to_contain_text("Updates every 3 s")
    in_the_ivr = page.locator("#calls-rows tr", has_text="in the IVR")
    before = in_the_ivr.count()
    simulator = page.context.new_page()  # same session, another tab
    simulator.goto("/console/simulator")
    simulator.get_by_label("Calling from").fill("+14155550142")
    simulator.get_by_role("button", name="Call").click()
    expect(simulator.get_by_role("log")).to_contain_text("For English, press 1.")
    # Refreshed in place (no navigation): the new call is there, in the IVR.
    expect(in_the_ivr).to_have_count(before + 1, timeout=15_000)
    expect(control).to_contain_text("Updated at")
    page.get_by_role("button", name="Pause updates").click()
    expect(control).to_contain_text("Updates paused")
    expect(page.get_by_role("button", name="Resume updates")).to_have_attribute(
        "aria-pressed", "true"
    )
    simulator.get_by_role("button", name="Hang up").click()
    shot(page, "calls-live")
    simulator.close()


A11Y_PAGES = [
    "/console/flows",
    "/console/flows/default",
    "/console/flows/default?node=main_menu",
    "/console/flows/default/yaml",
    "/console/flows/default/diff",
    "/console/flows/default/history",
    "/console/simulator",
    "/console/verifications",
    "/console/calls",
    "/console/customers",
    "/console/prompts",
    "/console/prompts?locale=en-US&key=flow.welcome",
    "/console/prompts/en-US/diff",
    "/console/users",
    "/console/audit",
]
A11Y_RULES = {
    "runOnly": {
        "type": "tag",
        "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"],
    },
    "resultTypes": ["violations"],
}


def test_every_page_passes_axe_core_wcag_2_2_aa(page, served, browser):
    """axe-core (the engine behind Lighthouse's accessibility audit) on every page, signed out
    and signed in: labels, names, contrast, landmarks, ARIA use."""
    from axe_playwright_python.sync_playwright import Axe

    axe = Axe()
    found = {}
    page.goto("/console/sign-in")
    found["/console/sign-in"] = axe.run(page, options=A11Y_RULES)
    sign_in(page, served)
    for path in A11Y_PAGES:
        page.goto(path)
        found[path] = axe.run(page, options=A11Y_RULES)
    report = "\n".join(
        f"{path}:\n{results.generate_report()}"
        for path, results in found.items()
        if results.violations_count
    )
    assert not report, report
