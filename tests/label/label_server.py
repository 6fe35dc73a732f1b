"""A real `monailabel start_server` for the label tests: started on 127.0.0.1 in its own process group, polled until it
answers (bounded), stopped with TERM then KILL in bounded time, nothing of the group left behind."""

import os
import signal
import socket
import subprocess
import sys
import time

import requests

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
START_TIMEOUT, STOP_TIMEOUT = 300, 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def server_env(**extra) -> dict:
    """The test's environment for the server: this repository first on PYTHONPATH, this interpreter's `monailabel`."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # the `monailabel` script runs `python -m monailabel.main`: the interpreter of this test must be that python
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["MONAILABEL_PYEXE"] = sys.executable
    env.update({k: str(v) for k, v in extra.items()})
    return env


class LabelServer:
    """`cmd` (a `monailabel start_server ... --host 127.0.0.1 --port <port>` command) run in `cwd`, logging to `log`.

    Use as a context manager: entering waits until `GET /info/` answers 200 (at most START_TIMEOUT seconds, failing
    with the log's tail if the server exits or never answers); leaving stops the process group.
    """

    def __init__(self, cmd, cwd, log, env=None):
        self.cmd, self.cwd, self.log_path, self.env = list(cmd), cwd, str(log), env or server_env()
        self.port = int(self.cmd[self.cmd.index("--port") + 1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def log_tail(self, n=4000) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-n:]

    def __enter__(self):
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.proc.poll() is None, f"the server exited ({self.proc.returncode}):\n{self.log_tail()}"
            assert time.monotonic() < deadline, f"no answer in {START_TIMEOUT} s:\n{self.log_tail()}"
            try:
                if requests.get(f"{self.url}/info/", timeout=5).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(1)

    def __exit__(self, *exc):
        # the whole process group (uvicorn and any task subprocess), TERM then KILL, in bounded time
        start = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT)
        self._log.close()
        assert time.monotonic() - start < 2 * STOP_TIMEOUT
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:  # task subprocesses end with their parent's group
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return False
            time.sleep(0.5)
        raise AssertionError(f"processes of the server's group {self.proc.pid} are still running")

    def wait_task(self, kind: str, timeout: float) -> dict:
        """Poll `GET /<kind>/` (`train`, `batch/infer`, `scoring`) until its last task is DONE or ERROR (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            task = requests.get(f"{self.url}/{kind}/", timeout=30).json()
            if task.get("status") in ("DONE", "ERROR"):
                return task
            assert time.monotonic() < deadline, f"{kind} still running after {timeout} s: {task}\n{self.log_tail()}"
            time.sleep(2)
