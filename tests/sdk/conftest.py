"""Starts a real `tollgate serve` (simulated provider) for the official SDK tests."""

import json
import os
import pathlib
import queue
import re
import signal
import subprocess
import threading
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = pathlib.Path(os.environ.get("TOLLGATE_BIN", ROOT / "target" / "debug" / "tollgate"))
KEY = "tg-sdk-test-key"


# Port 0: the proxy binds each listener once and names the ports on its ready line.
CONFIG = """
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
data_dir: {data}
policies: policies
ledger: {{ flush_interval_ms: 5 }}
server: {{ threads: 2, grace_period_secs: 0 }}
providers:
  sim:
    kind: simulated
models:
  gpt-4o-mini: {{ provider: sim }}
  claude-sonnet-5: {{ provider: sim }}
cache: {{ enabled: true }}
keys:
  - name: sdk
    key_env: TOLLGATE_SDK_KEY
    team: platform
    project: sdk-tests
    env: ci
"""


# Cheap-first cascades in both formats, for clients that ask for the aliases; the response
# cache for requests of the `cached` feature.
POLICIES = """
rules:
  - name: cheap-first
    match: { model: tollgate/cheap-first, endpoint: /v1/chat/completions }
    cascade:
      steps:
        - { provider: sim, model: gpt-4o-mini }
        - { provider: sim, model: gpt-4o }
      judges: { finish: true, refusal: true, json: true, tool_args: true }
  - name: claude-cheap-first
    match: { model: tollgate/claude-cheap-first, endpoint: /v1/messages }
    cascade:
      steps:
        - { provider: sim, model: claude-haiku-4-5 }
        - { provider: sim, model: claude-sonnet-5 }
      judges: { finish: true, refusal: true }
  - name: cached
    match: { feature: cached }
    cache: { scope: team }
"""


READY = re.compile(r"^tollgate ready proxy=(\S+) admin=(\S+)$")


def read_ready(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """The (proxy, admin) addresses from the ready line. The rest of stdout is drained on the
    reading thread, so the proxy never writes into a full pipe."""
    found: queue.Queue = queue.Queue()

    def read():
        for line in proc.stdout:
            m = READY.match(line.decode(errors="replace").rstrip("\n"))
            if m:
                found.put(m.groups())
        found.put(None)  # end of output: the process is gone

    threading.Thread(target=read, daemon=True).start()
    try:
        addrs = found.get(timeout=timeout)
    except queue.Empty:
        raise RuntimeError(f"tollgate printed no ready line within {timeout} s") from None
    if addrs is None:
        raise RuntimeError(f"tollgate exited ({proc.wait()}) before its ready line")
    return addrs


class Proxy:
    def __init__(self, tmp: pathlib.Path):
        self.data = tmp / "data"
        cfg = tmp / "tollgate.yaml"
        cfg.write_text(CONFIG.format(data=self.data))
        (tmp / "policies").mkdir()
        (tmp / "policies" / "cascades.yaml").write_text(POLICIES)
        self.log_path = tmp / "tollgate.log"
        self.log = open(self.log_path, "wb")
        env = dict(os.environ, TOLLGATE_SDK_KEY=KEY)
        self.proc = subprocess.Popen(
            [str(BINARY), "serve", "--config", str(cfg)], stdout=subprocess.PIPE, stderr=self.log, env=env
        )
        try:
            self.addr, self.admin = read_ready(self.proc, timeout=30)
            with urllib.request.urlopen(f"http://{self.admin}/readyz", timeout=10) as r:
                assert r.status == 200, r.status
        except Exception as e:
            self.proc.kill()
            self.proc.wait()
            self.log.close()
            raise RuntimeError(f"tollgate did not start: {e}\n{self.log_path.read_text()}") from e

    @property
    def base(self) -> str:
        return f"http://{self.addr}"

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
