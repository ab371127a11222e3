"""Run daphne and the task worker side by side (what `make run` does); stop both on Ctrl-C.

Usage: python bin/serve.py [--host 127.0.0.1] [--port 8000]

Each child runs in a session of its own, so the terminal's Ctrl-C reaches only this script,
which then asks each child once (SIGTERM) to stop: a second signal would make the worker
abandon the task it is running. If either child exits, the other is stopped too and this
script exits with the first one's status. On Linux the children also get SIGTERM if this
script dies without cleaning up (even by SIGKILL), so none is left behind.
"""

import argparse
import ctypes
import signal
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
# How long a child may take to stop (the worker first finishes the task it is running; an
# email gives up after EMAIL_TIMEOUT) before it is killed.
STOP_TIMEOUT = 20
PR_SET_PDEATHSIG = 1


def _die_with_this_script() -> None:
    # Runs in the child between fork and exec.
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", default="8000")
    options = parser.parse_args()

    stop_signal: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda signum, frame: stop_signal.append(signum))

    bin_dir = Path(sys.executable).parent
    commands = {
        # No autoreloader, as for daphne (which has none): restart `make run` to load code changes.
        "worker": [sys.executable, "manage.py", "db_worker", "--no-reload"],
        "daphne": [str(bin_dir / "daphne"), "-b", options.host, "-p", options.port, "shop.asgi:application"],
    }
    children = {
        name: subprocess.Popen(command, cwd=PROJECT, start_new_session=True, preexec_fn=_die_with_this_script)
        for name, command in commands.items()
    }

    exited = None
    while not stop_signal and exited is None:
        exited = next((name for name, child in children.items() if child.poll() is not None), None)
        time.sleep(0.2)
    if exited is not None:
        print(f"serve: {exited} exited with status {children[exited].returncode}; stopping the rest", file=sys.stderr)

    for child in children.values():
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT
    for name, child in children.items():
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"serve: {name} did not stop within {STOP_TIMEOUT} s; killing it", file=sys.stderr)
            child.kill()
            child.wait()
    if exited is None:
        return 0
    status = children[exited].returncode
    return status if status > 0 else 1  # a child that stops by itself is a failure, whatever it says


if __name__ == "__main__":
    sys.exit(main())
