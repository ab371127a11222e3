"""Run jobs against each other in real threads, as concurrent requests would (PostgreSQL tests)."""

import threading

from django.db import connection


def race(jobs: list) -> list:
    """Start every job at the same moment in its own thread; return each one's result or exception.

    Each thread closes its own database connection at the end, so the test database can be dropped.
    """
    barrier = threading.Barrier(len(jobs))
    outcomes: list = [None] * len(jobs)

    def run(index, job):
        try:
            barrier.wait(timeout=30)
            outcomes[index] = job()
        except BaseException as error:  # noqa: BLE001 - the test inspects every outcome
            outcomes[index] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(index, job)) for index, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a racing job hung"
    return outcomes
