"""A tiny Cog predictor for skygate's tests (pure Python, no weights).

mode "text" greets, "file" returns a file (Cog sends it as a data URL), "fail" raises, "sleep" never
answers, "id" names this server's start (the same in a reused sandbox), and "network" reports what the sandbox lets it reach. The network probes connect only to loopback addresses: inside
the sandbox they must fail; if the sandbox failed open they touch only this machine's own services.
"""

import os
import socket
import time
from typing import Any

from cog import BaseRunner, Path


def connect(port: int) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return "connected"
    except OSError as e:
        return type(e).__name__


def interfaces() -> list:
    return sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else sorted(
        line.split(":")[0].strip() for line in open("/proc/net/dev").read().splitlines()[2:]
    )


def default_route() -> bool:
    lines = open("/proc/net/route").read().splitlines()[1:]
    return any(line.split()[1] == "00000000" for line in lines if len(line.split()) > 1)


class Runner(BaseRunner):
    def setup(self) -> None:
        self.greeting = "hello"
        self.started = f"{os.getpid()}-{time.time_ns()}"

    def run(self, prompt: str = "world", mode: str = "text") -> Any:
        print(f"mode {mode}")
        if mode == "fail":
            raise ValueError("asked to fail")
        if mode == "id":
            return self.started
        if mode == "sleep":
            time.sleep(600)
        if mode == "file":
            out = Path("/work/greeting.txt")
            out.write_text(f"{self.greeting} {prompt}")
            return out
        if mode == "network":
            return {
                "postgres": connect(5432),
                "redis": connect(6379),
                "interfaces": interfaces(),
                "default_route": default_route(),
                "uid": os.getuid(),
                "cwd": os.getcwd(),
            }
        return f"{self.greeting} {prompt}"
