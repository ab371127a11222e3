"""Payment gateways: one interface, a result dataclass and errors that are safe to show.

The active gateway is the class named by settings.PAYMENT_GATEWAY, as SESSION_ENGINE
names the session store. Gateways are async: the checkout awaits the bank without
holding a thread.
"""

import asyncio
import contextlib
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.utils.module_loading import import_string


class PaymentError(Exception):
    """A payment did not go through. The message is safe to show the shopper."""

    default_message = "The payment could not be completed."

    def __init__(self, message: str = ""):
        super().__init__(message or self.default_message)

    @property
    def message(self) -> str:
        return str(self)


class PaymentDeclined(PaymentError):
    default_message = "Your card was declined. Please use another card."


class InsufficientFunds(PaymentDeclined):
    default_message = "Your card has insufficient funds. Please use another card."


class BankUnavailable(PaymentError):
    default_message = "The bank could not be reached. You have not been charged; please try again in a moment."


@dataclass(frozen=True)
class Card:
    number: str
    expiry_month: int
    expiry_year: int
    cvc: str

    @property
    def last4(self) -> str:
        return self.number[-4:]


@dataclass(frozen=True)
class ChargeResult:
    reference: str
    amount: Decimal
    currency: str
    card_last4: str


@dataclass(frozen=True)
class RefundResult:
    reference: str
    amount: Decimal
    currency: str


class PaymentGateway:
    """The interface every gateway implements.

    Both calls take an idempotency key: the same key always gets the same answer and
    moves money at most once, however often it is retried.
    """

    async def charge(self, *, amount: Decimal, currency: str, card: Card, idempotency_key: str) -> ChargeResult:
        raise NotImplementedError

    async def refund(
        self, *, charge_reference: str, amount: Decimal, currency: str, idempotency_key: str
    ) -> RefundResult:
        raise NotImplementedError

    async def resolve_charge(self, *, idempotency_key: str) -> ChargeResult | None:
        """Return the charge made under this key, or None after making sure none ever will be.

        Reconciliation calls this for a checkout that never heard the bank's answer (a
        timeout, a crash). A provider without such a call cancels the payment intent.
        """
        raise NotImplementedError


# Test cards with the outcomes the big providers give them.
SANDBOX_APPROVED_CARD = "4242424242424242"
SANDBOX_DECLINED_CARDS: dict[str, type[PaymentError]] = {
    "4000000000000002": PaymentDeclined,
    "4000000000009995": InsufficientFunds,
    "4000000000000119": BankUnavailable,
}
SANDBOX_ERRORS_BY_NAME = {error.__name__: error for error in SANDBOX_DECLINED_CARDS.values()}


class SandboxBank(PaymentGateway):
    """A bank that answers after SANDBOX_BANK_LATENCY_MS and keeps a durable ledger, like a real one.

    Every card that passes the form's checks is approved except the refusal test cards.
    The ledger (a SQLite file, settings.SANDBOX_BANK_LEDGER) holds every answer by
    idempotency key and is shared by every process of the shop: a retry that reaches
    another daphne process, or comes after a restart, gets the first answer, and money
    moves at most once. The bank writes its answer before it replies, so "the bank
    charged, the shop never heard" happens here as it does with real banks; the shop's
    reconciliation asks about such charges with resolve_charge().
    """

    def __init__(self, latency_ms: int | None = None, ledger_path: str | Path | None = None):
        self.latency_ms = settings.SANDBOX_BANK_LATENCY_MS if latency_ms is None else latency_ms
        self.ledger = SandboxLedger(settings.SANDBOX_BANK_LEDGER if ledger_path is None else ledger_path)

    async def charge(self, *, amount: Decimal, currency: str, card: Card, idempotency_key: str) -> ChargeResult:
        error_class = SANDBOX_DECLINED_CARDS.get(card.number)
        proposed = LedgerEntry(
            key=f"charge:{idempotency_key}",
            outcome=error_class.__name__ if error_class else "charged",
            reference=f"ch_{uuid.uuid4().hex[:20]}",
            amount=amount,
            currency=currency,
            card_last4=card.last4,
        )
        entry = await asyncio.to_thread(self.ledger.record, proposed)
        await asyncio.sleep(self.latency_ms / 1000)
        if entry.outcome == "charged" and (entry.amount != amount or entry.currency != currency):
            # Real providers refuse a key reused with other parameters rather than charge again.
            raise PaymentError("This payment was already attempted with a different amount.")
        return entry.as_charge()

    async def refund(
        self, *, charge_reference: str, amount: Decimal, currency: str, idempotency_key: str
    ) -> RefundResult:
        proposed = LedgerEntry(
            key=f"refund:{idempotency_key}",
            outcome="refunded",
            reference=f"re_{uuid.uuid4().hex[:20]}",
            amount=amount,
            currency=currency,
        )
        entry = await asyncio.to_thread(self.ledger.record, proposed)
        await asyncio.sleep(self.latency_ms / 1000)
        return RefundResult(reference=entry.reference, amount=entry.amount, currency=entry.currency)

    async def resolve_charge(self, *, idempotency_key: str) -> ChargeResult | None:
        # Voiding an unknown key is one write that loses to a charge recorded first, and
        # makes any charge arriving later fail: the answer given here stays true.
        voided = LedgerEntry(key=f"charge:{idempotency_key}", outcome="voided", amount=Decimal("0"), currency="")
        entry = await asyncio.to_thread(self.ledger.record, voided)
        return entry.as_charge() if entry.outcome == "charged" else None

    @property
    def charges(self) -> list[ChargeResult]:
        """Every charge that moved money, oldest first."""
        return [entry.as_charge() for entry in self.ledger.entries(kind="charge", outcome="charged")]

    @property
    def refunds(self) -> list[RefundResult]:
        """Every refund, oldest first."""
        return [
            RefundResult(reference=entry.reference, amount=entry.amount, currency=entry.currency)
            for entry in self.ledger.entries(kind="refund", outcome="refunded")
        ]


@dataclass(frozen=True)
class LedgerEntry:
    key: str
    outcome: str  # "charged", "refunded", "voided", or the name of the PaymentError it answered with
    amount: Decimal
    currency: str
    reference: str = ""
    card_last4: str = ""

    def as_charge(self) -> ChargeResult:
        """The answer this entry gives a charge: the result, or the refusal raised."""
        if self.outcome == "voided":
            raise PaymentDeclined("This payment was cancelled before the bank took it.")
        if self.outcome != "charged":
            raise SANDBOX_ERRORS_BY_NAME.get(self.outcome, PaymentError)()
        return ChargeResult(
            reference=self.reference, amount=self.amount, currency=self.currency, card_last4=self.card_last4
        )


class SandboxLedger:
    """The sandbox bank's books: one SQLite file, safe to share between processes."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._ready = False
        self._ready_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        with self._ready_lock:
            if not self._ready:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute(
                    "CREATE TABLE IF NOT EXISTS sandbox_bank_ledger ("
                    " idempotency_key TEXT PRIMARY KEY, kind TEXT NOT NULL, outcome TEXT NOT NULL,"
                    " reference TEXT NOT NULL, amount TEXT NOT NULL, currency TEXT NOT NULL,"
                    " card_last4 TEXT NOT NULL, created_at REAL NOT NULL)"
                )
                self._ready = True
        return connection

    def record(self, entry: LedgerEntry) -> LedgerEntry:
        """Write `entry` unless its key has an answer already; return the answer that stands."""
        kind = entry.key.split(":", 1)[0]
        with contextlib.closing(self._connect()) as connection:
            connection.execute(
                "INSERT OR IGNORE INTO sandbox_bank_ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.key,
                    kind,
                    entry.outcome,
                    entry.reference,
                    str(entry.amount),
                    entry.currency,
                    entry.card_last4,
                    time.time(),
                ),
            )
            row = connection.execute(
                "SELECT idempotency_key, outcome, amount, currency, reference, card_last4"
                " FROM sandbox_bank_ledger WHERE idempotency_key = ?",
                (entry.key,),
            ).fetchone()
        return self._entry(row)

    def entries(self, *, kind: str, outcome: str) -> list[LedgerEntry]:
        with contextlib.closing(self._connect()) as connection:
            rows = connection.execute(
                "SELECT idempotency_key, outcome, amount, currency, reference, card_last4"
                " FROM sandbox_bank_ledger WHERE kind = ? AND outcome = ? ORDER BY rowid",
                (kind, outcome),
            ).fetchall()
        return [self._entry(row) for row in rows]

    @staticmethod
    def _entry(row) -> LedgerEntry:
        key, outcome, amount, currency, reference, card_last4 = row
        return LedgerEntry(
            key=key,
            outcome=outcome,
            amount=Decimal(amount),
            currency=currency,
            reference=reference,
            card_last4=card_last4,
        )


@lru_cache(maxsize=1)
def get_gateway() -> PaymentGateway:
    """Return the process's gateway, built once from settings.PAYMENT_GATEWAY."""
    return import_string(settings.PAYMENT_GATEWAY)()
