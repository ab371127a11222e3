"""Benchmark: one purchase of a product held in 1000 carts -> time until the last cart's socket hears.

    python bench/cart_fanout.py [--carts 1000] [--rounds 3] [--client-processes 4] [--layer memory|redis]
                                [--quick] [--out DIR] [--redis URL] [--postgres URL] [any other bench/run.py option]

The cart_fanout scenario of bench/run.py, the one harness (the same as `make bench
SCENARIO=cart_fanout`), with the plan's figures taken from these options. Results:
bench/results/latest.json (scenarios.cart_fanout) and latest.md; README "Performance" says what
the figures mean. Exit code as bench/run.py's.
"""

import argparse
import json
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

RUN = Path(__file__).resolve().parent / "run.py"


def server_url(url: str) -> str:
    """A PostgreSQL URL without its database (older command lines named one; the run makes its own)."""
    return urlunsplit(urlsplit(url)._replace(path=""))


def run_scenario(name: str, plan: dict, *, postgres: str | None, rest: list[str]) -> None:
    """Replace this process with bench/run.py running scenario `name`, the plan's figures given (None: its own)."""
    command = [sys.executable, str(RUN), "--scenario", name]
    command += [f"--plan={key}={json.dumps(value)}" for key, value in plan.items() if value is not None]
    if postgres:
        command += ["--postgres", server_url(postgres)]
    os.execv(sys.executable, command + rest)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="Any other option goes to bench/run.py (see its --help)."
    )
    parser.add_argument("--carts", type=int, help="anonymous carts holding the last unit, a socket each")
    parser.add_argument("--rounds", type=int, help="purchases per channel layer")
    parser.add_argument("--client-processes", type=int, help="processes holding the cart sockets")
    parser.add_argument(
        "--layer", action="append", choices=["memory", "redis"], help="only this channel layer (repeatable)"
    )
    parser.add_argument("--postgres", help="the PostgreSQL server (a database is made on it for the run)")
    args, rest = parser.parse_known_args()
    plan = {
        "fanout_carts": args.carts,
        "fanout_rounds": args.rounds,
        "fanout_client_processes": args.client_processes,
        "fanout_layers": args.layer,
    }
    run_scenario("cart_fanout", plan, postgres=args.postgres, rest=rest)


if __name__ == "__main__":
    main()
