"""The server harness (`t2l_vllm.testing.servers`) on stand-in processes: health, failures that show the log, clean-up."""

from __future__ import annotations

import os
import sys
import time

import psutil
import pytest

from t2l_vllm.paths import CPU_ENGINE_DEFAULTS, with_cpu_engine_defaults
from t2l_vllm.testing import servers

# A stand-in server: answers /health with 200 (after a first 503), and starts a child in its group.
HEALTHY = """
import http.server, subprocess, sys
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
calls = []
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        calls.append(1)
        self.send_response(200 if len(calls) > 1 and self.path == "/health" else 503)
        self.end_headers()
    def log_message(self, *args):
        pass
print("listening", flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""


def group_gone(pgid: int, timeout_s: float = 30) -> bool:
    """No process of the group is left running (a stopped child may linger as a zombie until reaped)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(_running_in(process, pgid) for process in psutil.process_iter()):
            return True
        time.sleep(0.1)
    return False


def _running_in(process: psutil.Process, pgid: int) -> bool:
    try:
        return os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE
    except (OSError, psutil.Error):  # it ended while we looked
        return False


def test_a_healthy_process_is_yielded_and_its_whole_group_stopped(tmp_path):
    port = servers.free_port()
    command = [sys.executable, "-c", HEALTHY, str(port)]
    with servers.running(command, tmp_path / "log", f"http://127.0.0.1:{port}", poll_s=0.1, health_timeout_s=60) as server:
        assert server.healthy() and server.process.poll() is None
        pgid = server.process.pid
    assert server.process.poll() is not None
    assert group_gone(pgid)  # the child went with it
    assert "listening" in server.log_tail()


def test_a_process_that_exits_during_start_up_fails_with_its_code_and_the_log_tail(tmp_path):
    command = [sys.executable, "-c", "print('raise --max-lora-rank to at least 8'); raise SystemExit(3)"]
    with pytest.raises(servers.ServerFailed, match=r"(?s)exited with 3 during start-up.*raise --max-lora-rank to at least 8"):
        with servers.running(command, tmp_path / "log", f"http://127.0.0.1:{servers.free_port()}", poll_s=0.1):
            pass


def test_a_process_that_never_becomes_healthy_is_stopped_and_fails_with_the_log_tail(tmp_path):
    command = [sys.executable, "-c", "print('still loading', flush=True); import time; time.sleep(600)"]
    with pytest.raises(servers.ServerFailed, match=r"(?s)did not become healthy .* within 1 s.*still loading") as failed:
        with servers.running(command, tmp_path / "log", f"http://127.0.0.1:{servers.free_port()}", poll_s=0.1, health_timeout_s=1):
            pass
    assert "(log " in str(failed.value)


def test_the_cpu_engine_defaults_apply_only_where_the_environment_sets_none():
    assert with_cpu_engine_defaults({}) == CPU_ENGINE_DEFAULTS
    name = next(iter(CPU_ENGINE_DEFAULTS))
    assert with_cpu_engine_defaults({name: "7", "OTHER": "x"}) == {name: "7", "OTHER": "x"}


def test_the_serve_command_puts_the_callers_options_last_so_they_win():
    command = servers.t2l_serve_command(8000, ["--port", "9000"], cli_options=["-v"])
    assert command[:5] == [sys.executable, "-m", "t2l_vllm", "-v", "serve"]
    assert command[-2:] == ["--port", "9000"]
