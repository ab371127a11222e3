"""Benchmark: how punctually the unread-notification email goes out, with the task worker under load.

    python bench/escalation_timer.py [--notifications 2000 --seconds 10 | --rate 50 ...] [--writers 4]
                                     [--workers 1] [--delay-seconds 3] [--read-share 0.1]
                                     [--quick] [--out DIR] [--postgres URL] [any other bench/run.py option]

The escalation_timer scenario of bench/run.py, the one harness (the same as `make bench
SCENARIO=escalation_timer`), with the plan's figures taken from these options: --notifications
over --seconds is one load of that rate; --rate (repeatable) runs one load per rate, each for
--seconds. Results: bench/results/latest.json (scenarios.escalation_timer) and latest.md; README
"Performance" says what the figures mean. Exit code as bench/run.py's.
"""

import argparse

from cart_fanout import run_scenario


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="Any other option goes to bench/run.py (see its --help)."
    )
    parser.add_argument("--notifications", type=int, help="notifications written over --seconds (one load)")
    parser.add_argument("--rate", type=float, action="append", help="notifications a second (one load each)")
    parser.add_argument("--seconds", type=float, help="how long each load writes (default: the plan's)")
    parser.add_argument("--writers", type=int, help="writer threads in the notifier process")
    parser.add_argument("--workers", type=int, help="db_worker processes")
    parser.add_argument("--delay-seconds", type=float, help="the email is due this long after the notification")
    parser.add_argument("--read-share", type=float, help="share of the notifications read at once")
    parser.add_argument("--postgres", help="the PostgreSQL server (a database is made on it for the run)")
    args, rest = parser.parse_known_args()
    rates = args.rate
    if args.notifications:
        rates = [args.notifications / (args.seconds or 10.0)]
        args.seconds = args.seconds or 10.0
    plan = {
        "escalation_rates": rates,
        "escalation_seconds": args.seconds,
        "escalation_writers": args.writers,
        "escalation_workers": args.workers,
        "escalation_delay_s": args.delay_seconds,
        "escalation_read_share": args.read_share,
    }
    run_scenario("escalation_timer", plan, postgres=args.postgres, rest=rest)


if __name__ == "__main__":
    main()
