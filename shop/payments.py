"""Payment gateways: one interface, a result dataclass and errors that are safe to show.

The active gateway is the class named by settings.PAYMENT_GATEWAY, as SESSION_ENGINE
names the session store. Gateways are async: the checkout awaits the bank without
holding a thread.
"""

import asyncio
import threading
import uuid
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

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


# Test cards with the outcomes the big providers give them.
SANDBOX_APPROVED_CARD = "4242424242424242"
SANDBOX_DECLINED_CARDS: dict[str, type[PaymentError]] = {
    "4000000000000002": PaymentDeclined,
    "4000000000009995": InsufficientFunds,
    "4000000000000119": BankUnavailable,
}


class SandboxBank(PaymentGateway):
    """A bank in this process that answers after SANDBOX_BANK_LATENCY_MS, like a real one would.

    Every card that passes the form's checks is approved except the refusal test cards.
    It keeps a ledger of captured charges and refunds, keyed by idempotency key.
    """

    def __init__(self, latency_ms: int | None = None):
        self.latency_ms = settings.SANDBOX_BANK_LATENCY_MS if latency_ms is None else latency_ms
        # Threads may share the bank (each with its own event loop): a plain lock guards the ledger.
        self._lock = threading.Lock()
        self._answers: dict[str, ChargeResult | RefundResult | PaymentError] = {}
        self.charges: list[ChargeResult] = []
        self.refunds: list[RefundResult] = []

    async def charge(self, *, amount: Decimal, currency: str, card: Card, idempotency_key: str) -> ChargeResult:
        key = f"charge:{idempotency_key}"
        if (answer := self._answer(key)) is None:
            await asyncio.sleep(self.latency_ms / 1000)
            error_class = SANDBOX_DECLINED_CARDS.get(card.number)
            outcome = (
                error_class()
                if error_class
                else ChargeResult(
                    reference=f"ch_{uuid.uuid4().hex[:20]}", amount=amount, currency=currency, card_last4=card.last4
                )
            )
            answer = self._record(key, outcome)
        if isinstance(answer, PaymentError):
            raise answer
        return answer

    async def refund(
        self, *, charge_reference: str, amount: Decimal, currency: str, idempotency_key: str
    ) -> RefundResult:
        key = f"refund:{idempotency_key}"
        if (answer := self._answer(key)) is None:
            await asyncio.sleep(self.latency_ms / 1000)
            answer = self._record(
                key, RefundResult(reference=f"re_{uuid.uuid4().hex[:20]}", amount=amount, currency=currency)
            )
        return answer

    def _answer(self, key: str):
        with self._lock:
            return self._answers.get(key)

    def _record(self, key: str, outcome):
        """Keep the first answer for a key: two concurrent retries move money once."""
        with self._lock:
            if key not in self._answers:
                self._answers[key] = outcome
                if isinstance(outcome, ChargeResult):
                    self.charges.append(outcome)
                elif isinstance(outcome, RefundResult):
                    self.refunds.append(outcome)
            return self._answers[key]


@lru_cache(maxsize=1)
def get_gateway() -> PaymentGateway:
    """Return the process's gateway, built once from settings.PAYMENT_GATEWAY."""
    return import_string(settings.PAYMENT_GATEWAY)()
