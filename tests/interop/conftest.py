"""Fixtures for interop tests: the real skygate binary, started on a free loopback port with a fresh
data dir, plus keys created through its operator CLI."""

import os
import re
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def skygate_bin() -> str:
    path = os.environ.get("SKYGATE_BIN") or str(ROOT / "target" / "debug" / "skygate")
    if not os.access(path, os.X_OK):
        pytest.fail(f"skygate binary not found at {path}; build it or set SKYGATE_BIN")
    return path


class Skygate:
    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.data = Path(self.tmp.name) / "data"
        self.bin = skygate_bin()
        self.proc = None
        self.url = None
        self.ca = None

    def cli_lines(self, *args: str) -> list:
        out = subprocess.run(
            [self.bin, "--data-dir", str(self.data), *args],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert out.returncode == 0, f"{args} failed: {out.stderr}"
        return out.stdout.strip().splitlines()

    def cli(self, *args: str) -> str:
        return self.cli_lines(*args)[-1]

    def start(self) -> None:
        self.stderr = open(Path(self.tmp.name) / "server.stderr", "w")
        self.proc = subprocess.Popen(
            [self.bin, "serve", "--data-dir", str(self.data), "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=self.stderr, text=True,
        )
        found = {}
        timer = threading.Timer(60, self.proc.kill)
        timer.start()
        try:
            for line in self.proc.stdout:
                m = re.search(r"listening on (https://\S+)", line)
                if m:
                    found["url"] = m.group(1)
                if line.startswith("CA certificate: "):
                    found["ca"] = line.split(": ", 1)[1].strip()
                if len(found) == 2:
                    break
        finally:
            timer.cancel()
        assert len(found) == 2, "skygate did not start"
        self.url, self.ca = found["url"], found["ca"]
        # The SDK uses urllib's default SSL context, which trusts SSL_CERT_FILE.
        os.environ["SSL_CERT_FILE"] = self.ca

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.stderr.close()
        self.tmp.cleanup()


@pytest.fixture(scope="session")
def skygate():
    s = Skygate()
    acct = s.cli("accounts", "create", "--email", "sdk@example.com")
    proj = s.cli("projects", "create", "--account", acct, "--name", "sdk")
    s.live_key = s.cli("keys", "create", "--project", proj, "--name", "sdk live")
    s.test_key = s.cli("keys", "create", "--project", proj, "--test")
    s.start()
    yield s
    s.stop()
