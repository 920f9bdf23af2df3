"""The console in real headless Chromium (Playwright driving Debian's chromium, no JavaScript needed by
the pages): set the password from the setup link the CLI printed, log in, enrol 2FA with codes computed
by pyotp from the secret the page shows, confirm, log out, log in with a code, log in with a recovery
code (refused the second time), watch the Security page's status change, create a live key (refused
before 2FA, shown once after) and revoke it, and check the revoked key is refused by the API.

Screenshots of the main pages are taken on every run; with SKYGATE_UPDATE_SCREENSHOTS=1 they are
written to docs/screenshots/ (committed), else to a temporary directory.

The browser context ignores certificate errors; it is used only for this test's own server (a fresh
local CA on 127.0.0.1), never for another origin. The API check at the end trusts only that CA."""

import json
import os
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyotp
import pytest

from conftest import ROOT, Skygate

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "correct-horse-battery-staple-7"
EMAIL = "browser@example.com"


def _shots_dir(tmp: str) -> Path:
    if os.environ.get("SKYGATE_UPDATE_SCREENSHOTS") == "1":
        d = ROOT / "docs" / "screenshots"
    else:
        d = Path(tmp) / "screenshots"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture()
def console():
    if not os.access(CHROMIUM, os.X_OK):
        if os.environ.get("SKYGATE_TEST_REQUIRE_ALL") not in (None, "", "0"):
            pytest.fail(f"{CHROMIUM} not found and SKYGATE_TEST_REQUIRE_ALL is set")
        print(f"SKIPPED test_console_browser: {CHROMIUM} not found")
        pytest.skip(f"{CHROMIUM} not found")
    s = Skygate()
    lines = s.cli_lines("accounts", "create", "--email", EMAIL)
    s.account, s.setup_link = lines[-1], lines[-2]
    s.project = s.cli("projects", "create", "--account", s.account, "--name", "browser")
    s.start()
    yield s
    s.stop()


def _api_status(s: Skygate, key: str) -> int:
    ctx = ssl.create_default_context(cafile=s.ca)
    req = urllib.request.Request(f"{s.url}/v1/models", headers={"x-api-key": key})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_console_in_headless_chromium(console):
    from playwright.sync_api import sync_playwright

    s = console
    # The link the CLI printed names the server's own public URL (the listen address by default);
    # the server here listens on a port chosen at start, so the path is reused on the real URL.
    assert "/console/setup?token=" in s.setup_link, s.setup_link
    link = s.url + s.setup_link[s.setup_link.index("/console/setup"):]
    tmp = tempfile.mkdtemp()
    shots = _shots_dir(tmp)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1100, "height": 900})
        page = ctx.new_page()

        def status_text(name: str) -> str:
            return page.locator(f"#status-{name}").inner_text()

        def log_in(second: str | None):
            page.goto(f"{s.url}/console/login")
            page.fill("#email", EMAIL)
            page.fill("#password", PASSWORD)
            page.click("button[type=submit]")
            if second is not None:
                assert page.url.endswith("/console/login/2fa"), page.url
                page.fill("#code", second)
                page.click("main button[type=submit]")

        def log_out():
            page.click("header button[type=submit]")
            assert "/console/login" in page.url

        # Set the password from the single-use link.
        page.goto(link)
        page.screenshot(path=str(shots / "setup.png"), full_page=True)
        page.fill("#password", PASSWORD)
        page.fill("#password_again", PASSWORD)
        page.click("main button[type=submit]")
        assert page.url.endswith("/console/login?done=password"), page.url
        assert "Your password is set" in page.content()
        page.screenshot(path=str(shots / "login.png"), full_page=True)
        # The link works once.
        resp = page.goto(link)
        assert resp.status == 400 and "already used" in page.content()

        # Log in (no 2FA yet): the Security page says what to do next.
        log_in(None)
        assert page.url.endswith("/console/security"), page.url
        assert "off" in status_text("2fa")
        assert "Turn on two-factor authentication" in page.content()
        page.screenshot(path=str(shots / "security-before-2fa.png"), full_page=True)

        # A live key is refused before 2FA, with the hint.
        page.goto(f"{s.url}/console/keys")
        page.select_option("select[name=mode]", "live")
        with page.expect_response(lambda r: r.url.endswith("/console/keys")) as refused:
            page.click("section.project button:has-text('Create key')")
        assert refused.value.status == 403
        assert "Enable two-factor authentication first" in page.content()

        # Enrol: the QR code and the secret; pyotp computes the first code from the secret shown.
        page.goto(f"{s.url}/console/security")
        page.click("#two-factor button[type=submit]")
        secret = page.locator("#totp-secret").inner_text().strip()
        assert page.locator("div.qr img").get_attribute("src").startswith("data:image/svg+xml;base64,")
        assert page.locator("#totp-uri").inner_text().startswith("otpauth://totp/")
        page.screenshot(path=str(shots / "enrol-2fa.png"), full_page=True)
        totp = pyotp.TOTP(secret)
        page.fill("#confirm-code", totp.now())
        page.click("#enrol button[type=submit]")
        codes = [c.inner_text().strip() for c in page.locator("code.recovery-code").all()]
        assert len(codes) == 10, page.content()
        assert "on" in status_text("2fa") and "10" in status_text("codes")
        page.screenshot(path=str(shots / "recovery-codes.png"), full_page=True)

        # Log out, log in with a code (the next step's: the confirming one is used up).
        log_out()
        log_in(totp.at(time.time() + 30))
        assert page.url.endswith("/console/security"), page.url

        # Log in with a recovery code; the same code is refused the second time.
        log_out()
        log_in(codes[0])
        assert page.url.endswith("/console/security"), page.url
        assert "9" in status_text("codes")
        log_out()
        log_in(codes[0])
        assert "wrong or was already used" in page.content()
        log_in(codes[1])
        assert page.url.endswith("/console/security"), page.url
        assert "8" in status_text("codes")
        page.screenshot(path=str(shots / "security-after-2fa.png"), full_page=True)

        # A live key after 2FA: shown once, then only its last characters.
        page.goto(f"{s.url}/console/keys")
        page.select_option("select[name=mode]", "live")
        page.fill("section.project input[name=name]", "production")
        page.click("section.project button:has-text('Create key')")
        key = page.locator("#new-secret").inner_text().strip()
        assert key.startswith("sk_live_"), key
        page.screenshot(path=str(shots / "api-key-created.png"), full_page=True)
        assert _api_status(s, key) == 200
        page.goto(f"{s.url}/console/keys")
        assert key not in page.content()
        page.click("form[action='/console/keys/revoke'] button")
        assert "The key is revoked." in page.content()
        assert _api_status(s, key) == 401

        for name in ("tokens", "sessions", "audit"):
            page.goto(f"{s.url}/console/{name}")
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        audit = page.content()
        for action in ("password.set", "login.success", "2fa.enable", "2fa.recovery_code.use",
                       "login.2fa.failure", "keys.create", "keys.revoke", "logout"):
            assert action in audit, action
        browser.close()
    print(json.dumps({"screenshots": str(shots)}))
