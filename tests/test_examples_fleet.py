"""The fleet examples run as their docstrings say (SPEC H6): a FastAPI app under
``uvicorn --workers 3`` and a Flask app under ``gunicorn -w 3``, sharing a real Redis,
and ``examples/fleet_stampede.py`` firing 50 concurrent identical requests at them,
which run the endpoint once."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests._http_support import stop_process
from tests._redis_fixture import running_server, wait_until

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.timeout(180)


def _answers(uds: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(uds)
        except OSError:
            return False
    return True


@pytest.mark.parametrize(
    ("module", "server"),
    [
        ("examples.fleet_fastapi:app", ["uvicorn", "--workers", "3", "--uds", "{uds}"]),
        (
            "examples.fleet_flask:app",
            ["gunicorn", "-w", "3", "--threads", "32", "--bind", "unix:{uds}"],
        ),
    ],
    ids=["fastapi-uvicorn", "flask-gunicorn"],
)
def test_h6_fleet_example_runs_the_endpoint_once_for_fifty_requests(
    module: str, server: list[str]
) -> None:
    """H6: 50 concurrent identical requests at a 3-worker example service run its
    endpoint once, as examples/fleet_stampede.py prints."""
    pytest.importorskip(server[0])
    pytest.importorskip("fastapi" if "fastapi" in module else "flask")
    directory = Path(tempfile.mkdtemp(prefix="coalesce-example-"))
    uds = str(directory / "http.sock")
    with running_server() as redis_server:
        env = {**os.environ, "REDIS_URL": redis_server.url, "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", server[0], module]
        command += [part.format(uds=uds) for part in server[1:]]
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
        try:

            def up() -> bool:
                assert process.poll() is None, f"the server exited with {process.returncode}"
                return os.path.exists(uds) and _answers(uds)

            wait_until(up, "the example server listens", timeout=60)
            done = subprocess.run(
                [sys.executable, "-W", "error", str(EXAMPLES / "fleet_stampede.py"),
                 "http://fleet", "--uds", uds],
                capture_output=True, text=True, timeout=120, env=env, check=False,
            )  # fmt: skip
        finally:
            stop_process(process)
            shutil.rmtree(directory, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    assert "statuses: {200: 50}" in done.stdout
    assert "the endpoint ran 1 time for 50 requests" in done.stdout
