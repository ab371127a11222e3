"""shop/asgi.py: what the server process sets up before it serves anything."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_server_process_freezes_start_up_objects_and_raises_gc_thresholds():
    """Thousands of sockets make full GC passes long: the server runs them far less often (issue 8).

    Run in a process of its own, as daphne would load the module (importing it here would
    change this test process's collector).
    """
    probe = "import gc, json, shop.asgi; print(json.dumps([gc.get_threshold(), gc.get_freeze_count()]))"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "shop.settings"}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    (young, middle, old), frozen = json.loads(done.stdout.strip().splitlines()[-1])

    assert frozen > 10_000  # Django, Channels and the project's modules are out of the collector's reach
    assert young >= 50_000 and middle >= 50 and old >= 100
