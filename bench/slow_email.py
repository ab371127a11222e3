"""A mail server that takes BENCH_SLOW_S seconds (default 1) to accept each message: the bench's slow email."""

import os
import time

from django.core.mail.backends.locmem import EmailBackend


class SlowEmailBackend(EmailBackend):
    """Kept in memory, never sent; only slow."""

    def send_messages(self, email_messages):
        time.sleep(float(os.environ.get("BENCH_SLOW_S", "1.0")))
        return super().send_messages(email_messages)
