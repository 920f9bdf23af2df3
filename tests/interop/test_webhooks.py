"""Webhooks against the reference Standard Webhooks library (PyPI `standardwebhooks`), both ways:
deliveries made by skygate (through the official SDK's create call) verify with the library, and
`skygate webhooks verify` accepts what the library signs, over the 6-case matrix. The receiver is a
local HTTP server on 127.0.0.1."""

import base64
import hashlib
import hmac
import json
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from skytells import SkytellsClient
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from conftest import Skygate


class Receiver:
    def __init__(self) -> None:
        self.got = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with outer.lock:
                    outer.got.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def wait(self, n: int, timeout: float = 30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                if len(self.got) >= n:
                    return list(self.got)
            time.sleep(0.05)
        with self.lock:
            return list(self.got)

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def hooks():
    """A skygate that may deliver to a plain-http loopback receiver (development settings)."""
    s = Skygate()
    acct = s.cli("accounts", "create", "--email", "hooks@example.com")
    s.project = s.cli("projects", "create", "--account", acct, "--name", "hooks")
    s.live_key = s.cli("keys", "create", "--project", s.project)
    (s.data / "skygate.toml").write_text(
        "[webhooks]\nallow_insecure_http = true\nallow_private_networks = true\n"
    )
    s.secret = s.cli("webhooks", "secret", "--project", s.project)
    s.start()
    rx = Receiver()
    yield s, rx
    rx.close()
    s.stop()


def test_deliveries_verify_with_the_standard_webhooks_library(hooks):
    s, rx = hooks
    client = SkytellsClient(s.live_key, base_url=s.url + "/v1")
    p = client.predictions.create({
        "model": "echo",
        "input": {"prompt": "hello"},
        "webhook": {"url": rx.url("/sdk"), "events": ["started", "completed"]},
    })
    pid = p["id"]
    got = [g for g in rx.wait(2) if g[0] == "/sdk"]
    assert len(got) == 2
    statuses = set()
    for _, headers, body in got:
        payload = Webhook(s.secret).verify(body, headers)
        assert payload["id"] == pid
        statuses.add(payload["status"])
        # X-Skytells-Signature: hex HMAC-SHA256 of the raw body keyed by the whole "whsec_…" string.
        want = hmac.new(s.secret.encode(), body, hashlib.sha256).hexdigest()
        assert headers["x-skytells-signature"] == want
        assert headers["content-type"] == "application/json"
        assert headers["user-agent"].startswith("skygate-webhooks/")
        # A wrong secret or an altered body fails the library's check.
        with pytest.raises(WebhookVerificationError):
            Webhook(OTHER).verify(body, headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(s.secret).verify(body + b" ", headers)
    # The started event shows the prediction as it was when sent: starting or already processing.
    assert len(statuses) == 2 and "succeeded" in statuses and statuses & {"starting", "processing"}


def _verify(s: Skygate, secrets, body: bytes, headers: dict, tmp: Path):
    f = tmp / "body.json"
    f.write_bytes(body)
    args = [s.bin, "--data-dir", str(s.data), "webhooks", "verify", "--body", str(f)]
    for sec in secrets:
        args += ["--secret", sec]
    for k, v in headers.items():
        args += ["--header", f"{k}: {v}"]
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)


def _signed(secret: str, body: str, age: timedelta = timedelta(0), msg_id: str = "msg_p5jXN8AQM9LWM0D4loKWxJek"):
    ts = datetime.now(tz=timezone.utc) - age
    sig = Webhook(secret).sign(msg_id, ts, body)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(ts.timestamp())),
        "webhook-signature": sig,
    }


SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER = "whsec_" + base64.b64encode(bytes(range(32))).decode()


@pytest.mark.parametrize(
    "case, secrets, mutate, ok, reason",
    [
        ("valid", [SECRET], None, True, None),
        ("one of several valid", [OTHER, SECRET], None, True, None),
        ("body altered", [SECRET], "body", False, "no signature matched"),
        ("wrong secret", [OTHER], None, False, "no signature matched"),
        ("timestamp more than 5 minutes old", [SECRET], "old", False, "timestamp too old"),
        ("header missing", [SECRET], "missing", False, "webhook-signature"),
    ],
)
def test_our_verify_accepts_what_the_library_signs(hooks, tmp_path, case, secrets, mutate, ok, reason):
    s, _ = hooks
    body = json.dumps({"id": "x", "status": "succeeded", "output": "é"})
    headers = _signed(SECRET, body, age=timedelta(minutes=6) if mutate == "old" else timedelta(0))
    sent = body.encode()
    if mutate == "body":
        sent = body.replace("succeeded", "failed").encode()
    if mutate == "missing":
        del headers["webhook-signature"]
    out = _verify(s, secrets, sent, headers, tmp_path)
    if ok:
        assert out.returncode == 0, f"{case}: {out.stderr}"
        assert out.stdout.startswith("valid")
    else:
        assert out.returncode == 1, f"{case}: {out.stdout} {out.stderr}"
        assert reason in out.stderr, f"{case}: {out.stderr}"
        assert out.stderr.count("\n") == 1, "one line"
