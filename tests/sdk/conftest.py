"""Starts a real `tollgate serve` (simulated provider) for the official SDK tests."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = pathlib.Path(os.environ.get("TOLLGATE_BIN", ROOT / "target" / "debug" / "tollgate"))
KEY = "tg-sdk-test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONFIG = """
listen: 127.0.0.1:{port}
admin_listen: 127.0.0.1:{admin}
data_dir: {data}
ledger: {{ flush_interval_ms: 5 }}
server: {{ threads: 2, grace_period_secs: 0 }}
providers:
  sim:
    kind: simulated
models:
  gpt-4o-mini: {{ provider: sim }}
  claude-sonnet-5: {{ provider: sim }}
keys:
  - name: sdk
    key_env: TOLLGATE_SDK_KEY
    team: platform
    project: sdk-tests
    env: ci
"""


class Proxy:
    def __init__(self, tmp: pathlib.Path):
        self.port, self.admin = free_port(), free_port()
        self.data = tmp / "data"
        cfg = tmp / "tollgate.yaml"
        cfg.write_text(CONFIG.format(port=self.port, admin=self.admin, data=self.data))
        self.log = open(tmp / "tollgate.log", "wb")
        env = dict(os.environ, TOLLGATE_SDK_KEY=KEY)
        self.proc = subprocess.Popen(
            [str(BINARY), "serve", "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=self.log, env=env
        )
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("tollgate did not start")
            time.sleep(0.05)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def records(self, n: int, timeout: float = 10.0) -> list[dict]:
        """All ledger records, once there are at least n."""
        deadline = time.time() + timeout
        while True:
            out = []
            ledger = self.data / "ledger"
            for seg in sorted(ledger.glob("*.jsonl")) if ledger.exists() else []:
                for line in seg.read_text().splitlines(keepends=True):
                    if line.endswith("\n"):
                        out.append(json.loads(line))
            if len(out) >= n:
                return out
            if time.time() > deadline:
                raise AssertionError(f"ledger has {len(out)} records, expected {n}")
            time.sleep(0.02)

    def last_record(self, n: int) -> dict:
        return self.records(n)[n - 1]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)
        self.log.close()


@pytest.fixture()
def proxy(tmp_path):
    p = Proxy(tmp_path)
    yield p
    p.stop()
