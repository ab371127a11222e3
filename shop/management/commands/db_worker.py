"""`manage.py db_worker`: django-tasks-db's worker, which first queues again what a dead worker left RUNNING.

django-tasks-db marks a task RUNNING when a worker claims it and SUCCESSFUL or FAILED when it
ends; it has no lease or heartbeat. A worker killed in between (SIGKILL, the OOM killer, a
power cut) leaves the row RUNNING forever and no worker runs it again: an order's
confirmation email, or a reconciliation, would simply never happen.

This command replaces django-tasks-db's own (Django runs the command of the first app in
INSTALLED_APPS that has one: `shop` comes before `django_tasks_db`), so every way the worker
is started (`make run`, `make worker`, the systemd unit, `make prod-local`) gets it. It
changes two things:

- Each worker is named `host:pid:start` (the machine, the process id and the kernel's start
  time of that process), so a later worker on the same machine can tell for sure whether
  the process that claimed a task still runs.
- At start, before taking any task, it puts back to READY each RUNNING task whose worker is
  a process of this machine that no longer runs, and each RUNNING task of a worker it cannot
  check (another machine, an id of another form) that has run longer than
  --abandoned-after (30 min by default; far above what any task of the shop takes: an email
  gives up after EMAIL_TIMEOUT). Each such task is run again from the start.

A task run again may have done part of its work before its worker died: delivery is at
least once. The confirmation email narrows the duplicate to a worker killed between the
mail server's "queued" and the order's receipt note (README, "Faults survived").
"""

import logging
import os
import socket
from datetime import timedelta
from pathlib import Path

from django.utils import timezone
from django_tasks import TaskResultStatus
from django_tasks_db.management.commands import db_worker
from django_tasks_db.models import DBTaskResult

logger = logging.getLogger(__name__)

ABANDONED_AFTER = timedelta(minutes=30)
# Worker ids are at most 64 characters (django-tasks-db); pid and start time take at most 22.
HOST_LENGTH = 40


def this_host() -> str:
    return socket.gethostname()[:HOST_LENGTH]


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of process `pid` (Linux), or None if it is gone, a zombie, or unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # The command name may hold spaces: skip it.
    if fields[0] in {"Z", "X"}:
        return None
    return int(fields[19])


def worker_id_of(pid: int) -> str:
    """The id a worker running as process `pid` of this machine gives itself: `host:pid:start`."""
    return f"{this_host()}:{pid}:{process_start_time(pid) or ''}"


def worker_is_gone(worker_id: str) -> bool | None:
    """Tell whether the worker named `worker_id` has stopped; None when this machine cannot know."""
    parts = worker_id.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != this_host() or not parts[1].isdigit():
        return None
    pid, start = int(parts[1]), parts[2]
    if start:
        return str(process_start_time(pid) or "") != start
    try:
        os.kill(pid, 0)  # No start time where /proc is missing: the PID alone must do.
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def requeue_abandoned_tasks(*, backend_name: str, abandoned_after: timedelta = ABANDONED_AFTER) -> list[str]:
    """Put back to READY the RUNNING tasks whose worker is gone; return their ids.

    A worker of this machine is gone when its process no longer runs; a worker that cannot be
    checked is taken for gone once its task has been RUNNING longer than `abandoned_after`.
    Each task is put back only if it is still in the very claim that was looked at, so a task
    finished or claimed again meanwhile is left alone.
    """
    cutoff = timezone.now() - abandoned_after
    requeued = []
    running = DBTaskResult.objects.running().filter(backend_name=backend_name)
    for task in running.only("id", "task_path", "worker_ids", "started_at"):
        worker = task.worker_ids[-1] if task.worker_ids else ""
        gone = worker_is_gone(worker)
        if gone is None:
            gone = task.started_at is None or task.started_at < cutoff
        if not gone:
            continue
        claim = DBTaskResult.objects.filter(pk=task.pk, status=TaskResultStatus.RUNNING, started_at=task.started_at)
        if claim.update(status=TaskResultStatus.READY):
            requeued.append(str(task.pk))
            logger.warning(
                "Task %s (%s) was left RUNNING by worker %s, which is gone (since %s): queued again",
                task.pk,
                task.task_path,
                worker or "(unnamed)",
                task.started_at,
            )
    return requeued


class Command(db_worker.Command):
    help = "Run a database background worker, after queuing again the tasks a dead worker left RUNNING"

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.set_defaults(worker_id=worker_id_of(os.getpid()))
        parser.add_argument(
            "--abandoned-after",
            type=float,
            default=ABANDONED_AFTER.total_seconds(),
            help="Seconds after which a RUNNING task of a worker this machine cannot check (another "
            "machine) is taken for abandoned and queued again (default: %(default)s)",
        )

    def handle(self, *, abandoned_after: float, **options) -> None:
        requeue_abandoned_tasks(
            backend_name=options["backend_name"], abandoned_after=timedelta(seconds=abandoned_after)
        )
        super().handle(**options)
