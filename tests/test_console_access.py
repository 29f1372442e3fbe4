"""Who may see and do what in the console: every console URL, signed out, as viewer, editor
and admin; CSRF; sessions that end; the security headers."""

from __future__ import annotations

import pytest

from ivr.users import Role
from tests.console_helpers import PASSWORD, csrf_of, make_user, post, sign_in

SAMPLE_ARGUMENTS = {
    "name": "default",
    "node_id": "main_menu",
    "number": "1",
    "call_sid": "CA" + "0" * 32,
    "customer_id": "40001234",
    "locale": "en-US",
    "key": "flow.welcome",
}
ALLOWED = (200, 302, 404)  # 404: allowed, but the sample id names nothing


@pytest.fixture
def console_app(simulated_app):
    for name, role in (("vera", "viewer"), ("eddie", "editor"), ("ada", "admin")):
        make_user(simulated_app, name, role)
    return simulated_app


def console_routes(app):
    """(method, path, endpoint) of every console route, with sample arguments filled in."""
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("console."):
            continue
        path = rule.rule
        for argument in rule.arguments:
            path = path.replace(f"<{argument}>", SAMPLE_ARGUMENTS[argument])
            path = path.replace(f"<int:{argument}>", SAMPLE_ARGUMENTS[argument])
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            found.append((method, path, rule.endpoint))
    return found


def test_every_console_view_names_the_role_it_needs(console_app):
    for _, _, endpoint in console_routes(console_app):
        if endpoint == "console.sign_in":
            continue
        view = console_app.view_functions[endpoint]
        assert isinstance(getattr(view, "required_role", None), Role), endpoint


def test_a_signed_out_visitor_sees_only_the_sign_in_page(console_app):
    client = console_app.test_client()
    for method, path, endpoint in console_routes(console_app):
        response = client.open(path, method=method)
        if endpoint == "console.sign_in":
            assert response.status_code in (200, 400), (method, path)
            continue
        fetched = getattr(console_app.view_functions[endpoint], "answers_json", False)
        if method == "GET" and not fetched:
            assert response.status_code == 302, path
            assert response.headers["Location"].startswith("/console/sign-in")
        else:  # a change, or what a page script fetches: told, not redirected
            assert response.status_code == 401, (method, path)
        assert "flow.welcome" not in response.text  # nothing of a flow leaks
        assert "<svg" not in response.text


def test_viewers_see_but_change_nothing(console_app):
    viewer = sign_in(console_app, "vera")
    for method, path, endpoint in console_routes(console_app):
        required = getattr(console_app.view_functions[endpoint], "required_role", None)
        if method == "GET" and required is Role.VIEWER:
            assert viewer.get(path).status_code in ALLOWED, path
        elif method == "POST" and required is not None and required is not Role.VIEWER:
            assert post(viewer, path).status_code == 403, path


def test_editors_change_flows_and_admins_manage_users(console_app):
    editor = sign_in(console_app, "eddie")
    admin = sign_in(console_app, "ada")
    for method, path, endpoint in console_routes(console_app):
        required = getattr(console_app.view_functions[endpoint], "required_role", None)
        if method != "GET" or required is None:
            continue
        status = editor.get(path).status_code
        assert status == 403 if required is Role.ADMIN else status in ALLOWED, path
        assert admin.get(path).status_code in ALLOWED, path


def test_a_change_without_the_csrf_token_is_refused(console_app):
    editor = sign_in(console_app, "eddie")
    for data in ({}, {"csrf_token": "forged"}):
        response = editor.post("/console/flows/default/discard", data=data)
        assert response.status_code == 403
        assert "CSRF" in response.text
    other = sign_in(console_app, "ada")
    stolen = csrf_of(other.get("/console/flows").text)
    assert (
        editor.post("/console/flows/default/discard", data={"csrf_token": stolen}).status_code
        == 403
    )


def test_the_sign_in_form_needs_its_own_token(console_app):
    client = console_app.test_client()
    response = client.post("/console/sign-in", data={"username": "ada", "password": PASSWORD})
    assert response.status_code == 400
    assert "ivr_console=" not in response.headers.get("Set-Cookie", "")


def test_wrong_passwords_are_refused_alike_and_then_limited(console_app):
    client = console_app.test_client()
    token = csrf_of(client.get("/console/sign-in").text)
    unknown = client.post(
        "/console/sign-in", data={"username": "nobody", "password": "x" * 12, "csrf_token": token}
    )
    wrong = client.post(
        "/console/sign-in", data={"username": "ada", "password": "x" * 12, "csrf_token": token}
    )
    assert unknown.status_code == wrong.status_code == 401
    assert "username or password is not right" in wrong.text
    statuses = [
        client.post(
            "/console/sign-in", data={"username": "ada", "password": "y" * 12, "csrf_token": token}
        ).status_code
        for _ in range(10)
    ]
    assert statuses[-1] == 429, statuses
    blocked = client.post(
        "/console/sign-in", data={"username": "ada", "password": PASSWORD, "csrf_token": token}
    )
    assert blocked.status_code == 429, "even the right password waits out the limit"


def test_only_wrong_passwords_use_up_the_sign_in_limits(console_app):
    """A call center's staff behind one address all sign in; successes are not counted."""
    for _ in range(35):  # more than the per-user (10) and per-address (30) limits
        sign_in(console_app, "vera")
    client = console_app.test_client()
    token = csrf_of(client.get("/console/sign-in").text)
    wrong = {"username": "vera", "password": "y" * 12, "csrf_token": token}
    statuses = [client.post("/console/sign-in", data=wrong).status_code for _ in range(11)]
    assert statuses == [401] * 10 + [429]


def test_sign_out_and_deleting_a_user_end_their_sessions(console_app):
    admin = sign_in(console_app, "ada")
    editor = sign_in(console_app, "eddie")
    assert editor.get("/console/flows").status_code == 200
    console_app.extensions["ivr"].users.delete("eddie")
    assert editor.get("/console/flows").status_code == 302, "a deleted user is signed out"
    assert post(admin, "/console/sign-out").status_code == 302
    assert admin.get("/console/flows").status_code == 302


def test_the_session_cookie_is_httponly_lax_and_secure_behind_https(console_app):
    client = console_app.test_client()
    token = csrf_of(client.get("/console/sign-in").text)
    response = client.post(
        "/console/sign-in", data={"username": "ada", "password": PASSWORD, "csrf_token": token}
    )
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith("ivr_console="))
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Path=/console" in cookie
    assert "Secure" in cookie, "PUBLIC_BASE_URL is https in the tests"


def test_console_pages_carry_a_strict_content_security_policy(console_app):
    client = sign_in(console_app, "vera")
    for path in ("/console/sign-in", "/console/flows", "/console/flows/default"):
        policy = client.get(path).headers["Content-Security-Policy"]
        assert "unsafe-inline" not in policy
        assert "script-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy


@pytest.mark.parametrize("signed_in", [True, False], ids=["signed-in", "signed-out"])
def test_a_console_path_no_route_matches_gets_the_console_page_and_its_headers(
    console_app, signed_in
):
    client = sign_in(console_app, "vera") if signed_in else console_app.test_client()
    for method, path, status in (
        ("GET", "/console/no-such-page", 404),
        ("GET", "/console/flows/default/no-such-tab", 404),
        ("DELETE", "/console/sign-in", 405),
    ):
        response = client.open(path, method=method)
        assert response.status_code == status, (method, path)
        assert response.mimetype == "text/html", "the console's page, not the API's problem"
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Frame-Options"] == "DENY"
        assert ("Sign out" in response.text) is signed_in, "the page knows who is looking"
    refused = client.delete("/console/sign-in")
    assert set(refused.headers["Allow"].split(", ")) >= {"GET", "POST"}
    wanted_json = client.get("/console/no-such-page", headers={"Accept": "application/json"})
    assert wanted_json.mimetype == "application/problem+json"
    assert "Content-Security-Policy" in wanted_json.headers
    assert client.get("/consoleish").mimetype == "application/problem+json", "not the console"


def test_the_console_names_the_app_once_when_app_name_is_left_at_its_default(make_app):
    page = make_app(app_name=None).test_client().get("/console/sign-in").text
    assert "IVR console" in page
    assert "IVR IVR" not in page


def test_after_sign_in_the_visitor_goes_where_they_were_headed_but_never_off_site(console_app):
    client = console_app.test_client()
    token = csrf_of(client.get("/console/sign-in").text)
    form = {"username": "vera", "password": PASSWORD, "csrf_token": token}
    response = client.post("/console/sign-in?next=https://evil.example/", data=form)
    assert response.headers["Location"] == "/console/"
    client = console_app.test_client()
    token = csrf_of(client.get("/console/sign-in").text)
    form["csrf_token"] = token
    response = client.post("/console/sign-in?next=/console/flows/default", data=form)
    assert response.headers["Location"] == "/console/flows/default"


def test_the_sign_in_page_points_to_the_development_password_only_while_it_is_valid(
    console_app, make_app
):
    other_worker = make_app(  # the same instance folder and Redis: another worker
        twilio_account_sid=None,
        twilio_auth_token=None,
        twilio_caller_id=None,
        twilio_api_base_url=None,
    )
    hint = "the password is in"
    for app in (console_app, other_worker):
        assert hint in app.test_client().get("/console/sign-in").text
    path = console_app.extensions["ivr"].console_admin_password_file
    admin = sign_in(console_app, "ada")
    response = post(admin, "/console/users/admin/password")
    assert response.status_code == 200, response.text
    assert not path.exists(), "the file held the admin's old password"
    for app in (console_app, other_worker):
        assert hint not in app.test_client().get("/console/sign-in").text


def test_deleting_the_development_admin_in_the_console_deletes_its_password_file(console_app):
    path = console_app.extensions["ivr"].console_admin_password_file
    assert path.exists()
    response = post(sign_in(console_app, "ada"), "/console/users/admin/delete")
    assert response.status_code == 302, response.text
    assert not path.exists()
    assert "the password is in" not in console_app.test_client().get("/console/sign-in").text


def _wrong_sign_ins(client, count: int, forwarded_for: str) -> list[int]:
    token = csrf_of(client.get("/console/sign-in").text)
    statuses = []
    for attempt in range(count):
        wrong = {"username": f"nobody{attempt}", "password": "y" * 12, "csrf_token": token}
        response = client.post(
            "/console/sign-in", data=wrong, headers={"X-Forwarded-For": forwarded_for}
        )
        statuses.append(response.status_code)
    return statuses


def test_behind_a_trusted_proxy_the_limit_per_address_is_the_clients(make_app):
    """With TRUSTED_PROXY_HOPS=1 (nginx in front), one client's wrong passwords do not lock
    out another's; without it, X-Forwarded-For is not believed (a client cannot dodge)."""
    proxied = make_app(trusted_proxy_hops=1)
    client = proxied.test_client()
    assert _wrong_sign_ins(client, 31, "203.0.113.7")[-1] == 429
    assert _wrong_sign_ins(client, 1, "198.51.100.9") == [401], "another client still signs in"

    direct = make_app().test_client()
    statuses = _wrong_sign_ins(direct, 31, "203.0.113.8") + _wrong_sign_ins(direct, 1, "1.2.3.4")
    assert statuses[-2:] == [429, 429], "a forged X-Forwarded-For changes nothing"
