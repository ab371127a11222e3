"""Benchmark: how punctually the unread-notification email goes out, with the task worker under load.

    python bench/escalation_timer.py [--notifications 2000] [--seconds 10] [--writers 4]
                                     [--workers 1] [--delay-seconds 3] [--read-share 0.1]
                                     [--postgres postgres://postgres@127.0.0.1:5432/postgres]

Writer threads in this process write notifications through notify() (each its own transaction:
the row, the stream lock, the email task) at an even rate for --seconds, and mark a share of
them read right away. The task workers (`manage.py db_worker`, separate processes, default
polling interval) run the email tasks as they fall due, --delay-seconds after each notification
(NOTIFICATIONS_EMAIL_AFTER_MINUTES = delay / 60), while the writers keep enqueueing.

Reported: for each email, how late its claim (`emailed_at`) came after it was due
(created_at + delay): median, p90, p99, max, and the earliest (never before due); that every
unread notification was emailed exactly once, and no read one was. Emails go to the dummy
backend (nothing leaves the machine). Results: bench/results/escalation_timer.json.

Exit code 0: every check held; 1: one failed; 2: the benchmark could not run.
"""

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_bench import (  # noqa: E402
    RESULTS,
    ROOT,
    VENV_PYTHON,
    Child,
    ThrowawayDatabase,
    bench_environment,
    machine,
    percentile,
    reexec_in_venv,
    setup_django,
)


def write_load(*, users: list, count: int, seconds: float, writers: int, read_share: float) -> list[int]:
    """Write `count` notifications at an even rate over `seconds`; return the ids marked read at once."""
    from django.db import connections, transaction
    from django.utils import timezone

    from notifications import services
    from notifications.models import Notification

    read_ids: list[int] = []
    lock = threading.Lock()
    start = time.monotonic()
    every = max(1, round(1 / read_share)) if read_share > 0 else 0

    def writer(number: int) -> None:
        try:
            for index in range(number, count, writers):
                wait = start + seconds * index / count - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                user = users[index % len(users)]
                with transaction.atomic():
                    notification = services.notify(
                        recipient=user,
                        kind=Notification.Kind.ORDER_SHIPPED,
                        title=f"Order B{index:05d} has shipped",
                        url="/orders/",
                    )
                if every and index % every == 0:
                    Notification.objects.filter(pk=notification.pk).update(read_at=timezone.now())
                    with lock:
                        read_ids.append(notification.pk)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(number,)) for number in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return read_ids


def wait_for_tasks(timeout: float) -> bool:
    from django_tasks_db.models import DBTaskResult

    from notifications import escalation

    deadline = time.monotonic() + timeout
    tasks = DBTaskResult.objects.filter(task_path=escalation.send_unread_email.module_path)
    while time.monotonic() < deadline:
        if not tasks.exclude(status__in=["SUCCESSFUL", "FAILED"]).exists():
            return True
        time.sleep(0.5)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notifications", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--delay-seconds", type=float, default=3.0)
    parser.add_argument("--read-share", type=float, default=0.1)
    parser.add_argument(
        "--postgres", help="a PostgreSQL server URL: a database is created on it for the run, then dropped"
    )
    args = parser.parse_args()

    database = ThrowawayDatabase(args.postgres).create()
    workers: list[Child] = []
    try:
        env = bench_environment(
            database,
            redis_url=None,
            NOTIFICATIONS_EMAIL_AFTER_MINUTES=str(args.delay_seconds / 60),
            DJANGO_EMAIL_BACKEND="django.core.mail.backends.dummy.EmailBackend",
        )
        setup_django()
        from datetime import timedelta

        from django.contrib.auth import get_user_model
        from django.db.models import Count
        from django_tasks_db.models import DBTaskResult

        from notifications import escalation
        from notifications.models import Notification

        users = [
            get_user_model().objects.create_user(f"reader{number}", f"reader{number}@example.com", "bench-pass-1")
            for number in range(50)
        ]
        for number in range(args.workers):
            command = [str(VENV_PYTHON), "manage.py", "db_worker", "--no-reload", "--no-startup-delay"]
            workers.append(Child(f"worker-{number}", command, env=env, log_dir=database.dir).start())
        time.sleep(1.0)  # The workers are up and polling.
        print(
            f"writing {args.notifications} notifications over {args.seconds:.0f} s with {args.writers} writers; "
            f"emails due {args.delay_seconds:g} s after each; {args.workers} worker(s)",
            flush=True,
        )
        written_at = time.monotonic()
        read_ids = write_load(
            users=users,
            count=args.notifications,
            seconds=args.seconds,
            writers=args.writers,
            read_share=args.read_share,
        )
        print(f"written in {time.monotonic() - written_at:.1f} s; waiting for the due emails", flush=True)
        finished = wait_for_tasks(timeout=args.delay_seconds + 120)
        delay = timedelta(seconds=args.delay_seconds)
        lateness = [
            (emailed_at - (created_at + delay)).total_seconds() * 1000
            for created_at, emailed_at in Notification.objects.filter(emailed_at__isnull=False).values_list(
                "created_at", "emailed_at"
            )
        ]
        emailed_read = Notification.objects.filter(pk__in=read_ids, emailed_at__isnull=False).count()
        unread_not_emailed = Notification.objects.filter(read_at__isnull=True, emailed_at__isnull=True).count()
        results = DBTaskResult.objects.filter(task_path=escalation.send_unread_email.module_path)
        sent_twice = (
            results.filter(return_value__sent=True)
            .values("args_kwargs__kwargs__notification_id")
            .annotate(times=Count("id"))
            .filter(times__gt=1)
            .count()
        )
        report = {
            "benchmark": "escalation_timer",
            "notifications": args.notifications,
            "seconds": args.seconds,
            "writers": args.writers,
            "workers": args.workers,
            "delay_seconds": args.delay_seconds,
            "database": "postgresql" if args.postgres else "sqlite",
            "emails": len(lateness),
            "read_at_once": len(read_ids),
            "late_ms": {
                "min": round(min(lateness), 1) if lateness else None,
                "p50": round(percentile(lateness, 0.5), 1),
                "p90": round(percentile(lateness, 0.9), 1),
                "p99": round(percentile(lateness, 0.99), 1),
                "max": round(max(lateness), 1) if lateness else None,
            },
            "checks": {
                "all_tasks_finished": finished,
                "no_email_before_due": bool(lateness) and min(lateness) >= 0,
                "every_unread_emailed": unread_not_emailed == 0,
                "no_read_one_emailed": emailed_read == 0,
                "none_sent_twice": sent_twice == 0,
            },
            "machine": machine(),
        }
    except Exception as error:
        print(f"The benchmark could not run: {error!r}", file=sys.stderr)
        for worker in workers:
            print(worker.log_tail(), file=sys.stderr)
        return 2
    finally:
        for worker in workers:
            worker.stop()
        from django.db import connections

        connections.close_all()
        database.drop()
    late = report["late_ms"]
    print(
        f"{report['emails']} emails ({report['read_at_once']} read in time, skipped); late after due: "
        f"min {late['min']} ms, median {late['p50']} ms, p90 {late['p90']} ms, p99 {late['p99']} ms, max {late['max']} ms"
    )
    for name, held in report["checks"].items():
        print(f"  {'ok  ' if held else 'FAIL'} {name.replace('_', ' ')}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "escalation_timer.json").write_text(json.dumps(report, indent=2))
    print(f"written to {(RESULTS / 'escalation_timer.json').relative_to(ROOT)}")
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    reexec_in_venv()
    sys.exit(main())
