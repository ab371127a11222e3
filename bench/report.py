"""What a bench run writes beside latest.json: the goals it is judged by, latest.md, and the PNG plots."""

from pathlib import Path


def _get(report: dict, scenario: str, *path):
    value = report["scenarios"].get(scenario, {})
    for key in path:
        if isinstance(value, dict):
            value = value.get(key)
        else:
            return None
    return value


def _goal(figure: str, value, limit: float, *, at_most: bool = True, unit: str = "", note: str = "") -> dict:
    met = None if value is None else (value <= limit if at_most else value >= limit)
    return {
        "figure": figure,
        "value": value,
        "goal": f"{'<=' if at_most else '>='} {limit}{(' ' + unit) if unit else ''}",
        "met": met,
        **({"note": note} if note else {}),
    }


def _exactly(figure: str, value, expected) -> dict:
    return {
        "figure": figure,
        "value": value,
        "goal": f"== {expected}",
        "met": None if value is None else value == expected,
    }


def goals(report: dict) -> list[dict]:
    """Every goal of the issue, with the figure it is judged on (None when that scenario did not run)."""
    found = []
    scenarios = report["scenarios"]
    if "notify_overhead" in scenarios:
        found.append(
            _goal(
                "notify_overhead.slow_notify_p50_over_off_p50",
                _get(report, "notify_overhead", "slow_notify_p50_over_off_p50"),
                1.05,
            )
        )
        found.append(
            {
                "figure": "notify_overhead.sync_baseline_p50_over_off_p50",
                "value": _get(report, "notify_overhead", "sync_baseline_p50_over_off_p50"),
                "goal": "shows the cost avoided (no limit)",
                "met": None,
            }
        )
    if "slow_bank" in scenarios:
        waves = _get(report, "slow_bank", "waves") or []
        largest = max(waves, key=lambda row: row["concurrent_checkouts"], default={})
        size = largest.get("concurrent_checkouts")
        found.append(
            _goal(f"slow_bank.waves[{size}].wall_over_bank_latency", largest.get("wall_over_bank_latency"), 1.3)
        )
        found.append(
            _exactly("slow_bank.waves[].errors (sum)", sum(row["errors"] for row in waves) if waves else None, 0)
        )
        found.append(
            _goal("slow_bank.catalog_p99_storm_over_idle", _get(report, "slow_bank", "catalog_p99_storm_over_idle"), 3)
        )
    if "push_latency" in scenarios:
        runs = [
            row for row in _get(report, "push_latency", "runs") or [] if row["layer"] == "redis" and "tree" not in row
        ]
        thousand = min(runs, key=lambda row: abs(row["sockets"] - 1000), default={})
        largest = max(runs, key=lambda row: row["sockets"], default={})
        found.append(
            _goal(f"push_latency.runs[redis,{thousand.get('sockets')}].p50_ms", thousand.get("p50_ms"), 2, unit="ms")
        )
        found.append(
            _goal(f"push_latency.runs[redis,{thousand.get('sockets')}].p99_ms", thousand.get("p99_ms"), 5, unit="ms")
        )
        found.append(
            _goal(f"push_latency.runs[redis,{largest.get('sockets')}].p99_ms", largest.get("p99_ms"), 20, unit="ms")
        )
    if "burst" in scenarios:
        found.append(_exactly("burst.delivered_live_share", _get(report, "burst", "delivered_live_share"), 1.0))
        found.append(_goal("burst.last_delivery_s", _get(report, "burst", "last_delivery_s"), 0.5, unit="s"))
        found.append(_exactly("burst.duplicates", _get(report, "burst", "duplicates"), 0))
        found.append(
            _exactly("burst.delivered_after_resume_share", _get(report, "burst", "delivered_after_resume_share"), 1.0)
        )
    if "connections" in scenarios:
        steps = _get(report, "connections", "steps") or []
        largest = max(steps, key=lambda row: row["sockets"], default={})
        found.append(
            _goal(
                f"connections.steps[{largest.get('sockets')}].kb_per_socket",
                largest.get("kb_per_socket"),
                30,
                unit="KB",
            )
        )
        slowest = min((row["connects_per_s"] for row in steps if row.get("connects_per_s")), default=None)
        found.append(_goal("connections.steps[].connects_per_s (lowest)", slowest, 1000, at_most=False, unit="/s"))
    if "contention" in scenarios:
        found.append(
            _exactly(
                "contention.orders",
                _get(report, "contention", "orders"),
                _get(report, "contention", "parameters", "units_in_stock"),
            )
        )
        found.append(_exactly("contention.oversell", _get(report, "contention", "oversell"), 0))
        found.append(_exactly("contention.double_charges", _get(report, "contention", "double_charges"), 0))
        found.append(_exactly("contention.server_errors_5xx", _get(report, "contention", "server_errors_5xx"), 0))
        found.append(
            {
                "figure": "contention.orders_per_s",
                "value": _get(report, "contention", "orders_per_s"),
                "goal": "(reported)",
                "met": None,
            }
        )
    if "cart_fanout" in scenarios:
        found.append(_exactly("cart_fanout.signals_missing", _get(report, "cart_fanout", "signals_missing"), 0))
        carts = _get(report, "cart_fanout", "parameters", "carts")
        for layer, summary in (_get(report, "cart_fanout", "layers") or {}).items():
            found.append(
                {
                    "figure": f"cart_fanout.layers[{layer}].last_ms_max (last of {carts} carts, worst round)",
                    "value": summary.get("last_ms_max"),
                    "goal": "(reported)",
                    "met": None,
                }
            )
    if "escalation_timer" in scenarios:
        found.append(
            _exactly("escalation_timer.all_checks_held", _get(report, "escalation_timer", "all_checks_held"), True)
        )
        for load in _get(report, "escalation_timer", "loads") or []:
            found.append(
                {
                    "figure": f"escalation_timer.loads[{load['rate_per_s']}/s].late_ms.p50 / max",
                    "value": f"{load['late_ms']['p50']} / {load['late_ms']['max']}",
                    "goal": "(reported)",
                    "met": None,
                }
            )
    return found


# latest.md ---------------------------------------------------------------------------------------------


def _cell(value) -> str:
    return "-" if value is None else str(value)


def _table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _client_cpu(scenario: dict) -> str:
    cpu = scenario.get("client_cpu")
    if not cpu:
        return ""
    return (
        f"\nClient processes: {cpu['processes']}, CPU {cpu['cpu_s']} s in all, busiest at "
        f"{round(cpu['max_share'] * 100)} % of a core.\n"
    )


def markdown(report: dict) -> str:
    machine = report["machine"]
    services = report.get("services", {})
    out = [
        f"# Bench run {report['started_at']}{' (QUICK)' if report['quick'] else ''}\n",
        f"Machine: {machine['cpus']} × {machine['cpu_model']}, {machine['memory_gib']} GiB, Linux {machine['kernel']}, "
        f"Python {machine['python']}; PostgreSQL {services.get('postgresql')} (max_connections "
        f"{services.get('postgresql_max_connections')}), Redis {services.get('redis')}; load average at start "
        f"{machine['load_average_at_start']}; open files limit {report['open_files_limit']['soft']}. "
        f"Run time {report.get('run_seconds')} s.\n",
        "## Goals\n",
        _table(
            ["figure", "value", "goal", "met"],
            [
                [g["figure"], g["value"], g["goal"], {True: "yes", False: "**no**", None: ""}[g["met"]]]
                for g in report.get("goals", [])
            ],
        ),
    ]
    scenarios = report["scenarios"]
    for name, scenario in scenarios.items():
        out.append(f"## {name}\n")
        if "error" in scenario:
            out.append(f"Could not run: {scenario['error']}\n")
            continue
        out.append(
            "Parameters: " + ", ".join(f"{key} {value}" for key, value in scenario.get("parameters", {}).items()) + "\n"
        )
        if name == "notify_overhead":
            rows = [
                [mode, d.get("n"), d.get("p50_ms"), d.get("p95_ms"), d.get("p99_ms"), len(d.get("errors", []))]
                for mode, d in scenario["modes"].items()
            ]
            out.append(_table(["notifications", "n", "p50 ms", "p95 ms", "p99 ms", "errors"], rows))
            out.append(
                f"\nslow_notify_p50_over_off_p50 **{scenario['slow_notify_p50_over_off_p50']}**, "
                f"sync_baseline_p50_over_off_p50 **{scenario['sync_baseline_p50_over_off_p50']}**, "
                f"on/off {scenario['on_p50_over_off_p50']}\n"
            )
        elif name == "slow_bank":
            idle = scenario["catalog_idle"]
            rows = [
                [
                    w["concurrent_checkouts"],
                    w["wall_s"],
                    w["wall_over_bank_latency"],
                    w["errors"],
                    w["db_connections_peak"],
                    w["checkout"].get("p50_ms"),
                    w["checkout"].get("p99_ms"),
                    w["catalog_during"].get("p99_ms"),
                    w["catalog_p99_storm_over_idle"],
                ]
                for w in scenario["waves"]
            ]
            out.append(
                _table(
                    [
                        "concurrent",
                        "wall s",
                        "wall/bank",
                        "errors",
                        "db conns peak",
                        "checkout p50 ms",
                        "checkout p99 ms",
                        "catalog p99 ms",
                        "catalog p99 storm/idle",
                    ],
                    rows,
                )
            )
            out.append(
                f"\nCatalog idle: p50 {idle.get('p50_ms')} ms, p95 {idle.get('p95_ms')} ms, p99 {idle.get('p99_ms')} ms (n {idle.get('n')}).\n"
            )
            cpu = [
                f"{w['concurrent_checkouts']}: {w.get('server_cpu_ms_per_checkout')} ms ({w.get('server_cpu_share')} cores)"
                for w in scenario["waves"]
            ]
            out.append(
                "\nServer CPU per checkout while a wave paid (the catalog reader's pages included): "
                + ", ".join(cpu)
                + ".\n"
            )
            several = scenario.get("several_processes")
            if several:
                out.append(
                    f"\nThe wave of {several['concurrent_checkouts']} over {several['daphne_processes']} daphne processes: "
                    f"wall {several['wall_s']} s (wall/bank {several['wall_over_bank_latency']}), errors {several['errors']}, "
                    f"server CPU {several['server_cpu_ms_per_checkout']} ms per checkout ({several['server_cpu_share']} cores).\n"
                )
        elif name == "push_latency":
            rows = [
                [
                    r["layer"],
                    r["sockets"],
                    r.get("n"),
                    r.get("p50_ms"),
                    r.get("p95_ms"),
                    r.get("p99_ms"),
                    r.get("max_ms"),
                    r.get("pushes_missing"),
                ]
                for r in scenario["runs"]
            ]
            out.append(_table(["layer", "other sockets", "n", "p50 ms", "p95 ms", "p99 ms", "max ms", "missing"], rows))
        elif name == "burst":
            keys = [
                "notifications_written",
                "delivered_live_share",
                "delivered_after_resume_share",
                "duplicates",
                "last_delivery_s",
                "admin_action_s",
                "first_delivery_after_action_start_s",
                "last_delivery_after_action_end_s",
            ]
            out.append(_table(["figure", "value"], [[key, scenario.get(key)] for key in keys]))
        elif name == "connections":
            for label, key in (
                ("app (auth, groups, hello)", "steps"),
                ("bare consumer", "bare_consumer_steps"),
                ("app, compare tree", "compare_steps"),
            ):
                if key not in scenario:
                    continue
                out.append(f"\n{label}:\n\n")
                rows = [
                    [
                        s["sockets"],
                        s["kb_per_socket"],
                        s["connects_per_s"],
                        s["idle_cpu_share"],
                        s.get("p50_ms"),
                        s.get("p99_ms"),
                        s["connect_failures"],
                        s["server_open_files"],
                    ]
                    for s in scenario.get(key, [])
                ]
                out.append(
                    _table(
                        [
                            "sockets",
                            "KB/socket",
                            "connects/s",
                            "idle CPU (cores)",
                            "push p50 ms",
                            "push p99 ms",
                            "failed",
                            "open files",
                        ],
                        rows,
                    )
                )
            for hit in scenario.get("limits_hit", []):
                out.append(f"\nLimit hit ({hit['app']}) at {hit['at_sockets']} sockets: {hit['errors']}\n")
        elif name == "contention":
            keys = [
                "orders",
                "refusals",
                "oversell",
                "double_charges",
                "server_errors_5xx",
                "no_answer",
                "stock_left",
                "wall_s",
                "orders_per_s",
            ]
            out.append(_table(["figure", "value"], [[key, scenario.get(key)] for key in keys]))
        elif name == "cart_fanout":
            for layer, connect in scenario.get("connects", {}).items():
                out.append(
                    f"\n{layer}: {connect['opened']} cart sockets open in {connect['connect_s']} s, "
                    f"{connect['failed']} failed {connect['errors'] or ''}\n"
                )
            rows = [
                [
                    r["layer"],
                    r["round"],
                    f"{r['signals']}/{r['carts']}",
                    r["first_ms"],
                    r["p50_ms"],
                    r["p90_ms"],
                    r["p99_ms"],
                    r["last_ms"],
                    r["checkout_post_ms"],
                    r["server_fan_out_ms"],
                    r["server_query_ms"],
                    r["server_cpu_ms"],
                ]
                for r in scenario["rounds"]
            ]
            out.append(
                "\nFrom the checkout POST being sent:\n\n"
                + _table(
                    [
                        "layer",
                        "round",
                        "heard",
                        "first ms",
                        "p50 ms",
                        "p90 ms",
                        "p99 ms",
                        "last ms",
                        "POST ms",
                        "server fan-out ms",
                        "query ms",
                        "server CPU ms",
                    ],
                    rows,
                )
            )
        elif name == "escalation_timer":
            rows = [
                [
                    load["rate_per_s"],
                    load.get("achieved_rate_per_s"),
                    load["notifications"],
                    load["read_at_once"],
                    load["emails"],
                    load["late_ms"]["min"],
                    load["late_ms"]["p50"],
                    load["late_ms"]["p90"],
                    load["late_ms"]["p99"],
                    load["late_ms"]["max"],
                    "all held"
                    if all(load["checks"].values())
                    else "FAILED: " + ", ".join(key for key, held in load["checks"].items() if not held),
                ]
                for load in scenario["loads"]
            ]
            out.append(
                "\nEmail claimed after its due time:\n\n"
                + _table(
                    [
                        "notifications/s",
                        "achieved /s",
                        "written",
                        "read at once",
                        "emails",
                        "late min ms",
                        "p50 ms",
                        "p90 ms",
                        "p99 ms",
                        "max ms",
                        "checks",
                    ],
                    rows,
                )
            )
            out.append(
                "\nChecks: all tasks finished, no email before due, every unread one emailed, no read one "
                f"emailed, none sent twice. Tasks already due at the start: {scenario.get('backlog_tasks_due_at_start')}.\n"
            )
        out.append(_client_cpu(scenario))
        out.append(f"\n({scenario.get('seconds')} s)\n")
    return "\n".join(out)


# Plots -------------------------------------------------------------------------------------------------


def plots(report: dict, out: Path) -> list[Path]:
    """Draw the run's PNG plots next to latest.json; return their paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install -r requirements-bench.txt)")
        return []
    scenarios = report["scenarios"]
    made = []

    def cdf(axis, samples, label):
        if samples:
            ordered = sorted(samples)
            axis.plot(ordered, [(index + 1) / len(ordered) for index in range(len(ordered))], label=label)

    # Latency distributions, one panel per scenario that has them.
    panels = []
    if "samples_ms" in str(scenarios.get("notify_overhead", {})):
        panels.append(
            (
                "notify_overhead: checkout POST",
                [(mode, d.get("samples_ms")) for mode, d in scenarios["notify_overhead"]["modes"].items()],
            )
        )
    if scenarios.get("slow_bank", {}).get("waves"):
        series = [("catalog idle", scenarios["slow_bank"]["catalog_idle"].get("samples_ms"))]
        for wave in scenarios["slow_bank"]["waves"]:
            series.append((f"catalog during {wave['concurrent_checkouts']}", wave["catalog_during"].get("samples_ms")))
            series.append((f"checkout wave {wave['concurrent_checkouts']}", wave["checkout"].get("samples_ms")))
        panels.append(("slow_bank: catalog pages and checkouts", series))
    if scenarios.get("push_latency", {}).get("runs"):
        panels.append(
            (
                "push_latency: commit -> frame",
                [(f"{r['layer']} {r['sockets']}", r.get("samples_ms")) for r in scenarios["push_latency"]["runs"]],
            )
        )
    if scenarios.get("contention", {}).get("checkout"):
        panels.append(
            ("contention: checkout POST", [("200 buyers", scenarios["contention"]["checkout"].get("samples_ms"))])
        )
    if panels:
        figure, axes = plt.subplots(len(panels), 1, figsize=(9, 3.2 * len(panels)), squeeze=False)
        for axis, (title, series) in zip(axes[:, 0], panels, strict=True):
            for label, samples in series:
                cdf(axis, samples, label)
            axis.set_xscale("log")
            axis.set_xlabel("ms (log)")
            axis.set_ylabel("share ≤ x")
            axis.set_title(title)
            axis.grid(True, which="both", alpha=0.3)
            axis.legend(fontsize=7, loc="lower right")
        figure.tight_layout()
        path = out / "latency_distributions.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        made.append(path)

    # Push latency and memory per socket against connected sockets.
    push_runs = scenarios.get("push_latency", {}).get("runs", [])
    conn = scenarios.get("connections", {})
    if push_runs or conn.get("steps"):
        figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
        for layer in ("memory", "redis"):
            rows = [r for r in push_runs if r["layer"] == layer and r.get("p50_ms") is not None and "tree" not in r]
            if rows:
                left.plot([r["sockets"] for r in rows], [r["p50_ms"] for r in rows], "o-", label=f"{layer} p50")
                left.plot([r["sockets"] for r in rows], [r["p99_ms"] for r in rows], "o--", label=f"{layer} p99")
        rows = [s for s in conn.get("steps", []) if s.get("p50_ms") is not None]
        if rows:
            left.plot([s["sockets"] for s in rows], [s["p99_ms"] for s in rows], "s:", label="connections (redis) p99")
        left.set_xscale("symlog", linthresh=1)
        left.set_yscale("log")
        left.set_xlabel("other sockets on the process")
        left.set_ylabel("push latency, ms (log)")
        left.set_title("push latency against connected sockets")
        left.grid(True, which="both", alpha=0.3)
        left.legend(fontsize=8)
        for key, label in (("steps", "app"), ("bare_consumer_steps", "bare consumer")):
            rows = conn.get(key, [])
            if rows:
                right.plot(
                    [s["sockets"] for s in rows],
                    [s["kb_per_socket"] for s in rows],
                    "o-",
                    label=f"{label}: KB per socket",
                )
        right.axhline(30, color="grey", linestyle="--", label="goal 30 KB")
        right.set_xlabel("idle authenticated sockets")
        right.set_ylabel("server RSS per socket, KB")
        right.set_title("memory per socket")
        right.grid(True, alpha=0.3)
        right.legend(fontsize=8)
        figure.tight_layout()
        path = out / "sockets.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        made.append(path)

    burst = scenarios.get("burst", {})
    if burst.get("delivery_times_s"):
        times = burst["delivery_times_s"]
        figure, axis = plt.subplots(figsize=(9, 3.5))
        total = burst["parameters"]["notifications"]
        step = total / len(times)
        axis.plot(times, [(index + 1) * step for index in range(len(times))])
        axis.set_xlabel("seconds after the first delivery")
        axis.set_ylabel("notifications delivered live")
        axis.set_title(
            f"burst: {total} notifications to {burst['parameters']['users']} users (admin action took {burst['admin_action_s']} s)"
        )
        axis.grid(True, alpha=0.3)
        figure.tight_layout()
        path = out / "burst_delivery.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        made.append(path)
    return made
