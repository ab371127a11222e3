"""The benchmark harness (bench/run.py) runs end to end and writes a well-formed latest.json.

A smoke run, not a benchmark: tiny scenarios, no timing asserted. The figures themselves are
`make bench`'s job (README "Performance").
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def test_quick_bench_run_writes_results_with_the_issue_layout(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "bench/run.py",
            "--smoke",
            "--scenario",
            "contention",
            "--scenario",
            "burst",
            "--scenario",
            "cart_fanout",
            "--scenario",
            "escalation_timer",
            "--no-plots",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    print(done.stdout[-3000:], done.stderr[-3000:])
    assert done.returncode == 0, done.stderr[-2000:]

    report = json.loads((tmp_path / "latest.json").read_text())
    assert (tmp_path / "latest.md").read_text().startswith("# Bench run")
    assert report["quick"] is True
    assert {"cpus", "cpu_model", "memory_gib"} <= set(report["machine"])
    assert set(report["scenarios"]) == {"contention", "burst", "cart_fanout", "escalation_timer"}
    for scenario in report["scenarios"].values():
        assert "error" not in scenario
        assert scenario["parameters"] and scenario["units"]
        assert scenario["client_cpu"]["processes"] >= 1
    contention = report["scenarios"]["contention"]
    for figure in ("orders", "oversell", "double_charges", "orders_per_s"):
        assert isinstance(contention[figure], int | float)
    assert contention["orders"] == contention["parameters"]["units_in_stock"]
    assert contention["oversell"] == contention["double_charges"] == contention["server_errors_5xx"] == 0
    burst = report["scenarios"]["burst"]
    for figure in ("delivered_live_share", "delivered_after_resume_share", "duplicates", "last_delivery_s"):
        assert isinstance(burst[figure], int | float)
    assert burst["delivered_after_resume_share"] == 1.0
    fanout = report["scenarios"]["cart_fanout"]
    assert fanout["signals_missing"] == 0
    for row in fanout["rounds"]:
        assert row["signals"] == row["carts"] == fanout["parameters"]["carts"]
        for figure in ("first_ms", "p50_ms", "last_ms", "checkout_post_ms"):
            assert isinstance(row[figure], int | float)
    escalation = report["scenarios"]["escalation_timer"]
    assert escalation["all_checks_held"] is True
    for load in escalation["loads"]:
        assert load["emails"] == load["notifications"] - load["read_at_once"] > 0
        assert load["late_ms"]["min"] >= 0
    assert {goal["figure"] for goal in report["goals"]} >= {
        "contention.orders",
        "burst.last_delivery_s",
        "cart_fanout.signals_missing",
        "escalation_timer.all_checks_held",
    }
