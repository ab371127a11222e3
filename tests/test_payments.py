"""The sandbox bank and the gateway setting."""

import asyncio
import secrets
from datetime import date
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync

from shop import services
from shop.models import Order, Payment
from shop.payments import (
    BankUnavailable,
    Card,
    ChargeResult,
    InsufficientFunds,
    PaymentDeclined,
    PaymentError,
    PaymentGateway,
    RefundResult,
    SandboxBank,
    get_gateway,
)

NEXT_YEAR = date.today().year + 1


def card(number: str) -> Card:
    return Card(number=number, expiry_month=12, expiry_year=NEXT_YEAR, cvc="123")


APPROVED = card("4242424242424242")


def charge(bank: SandboxBank, number: str = "4242424242424242", key: str = "key-1", amount: str = "12.50"):
    return bank.charge(amount=Decimal(amount), currency="EUR", card=card(number), idempotency_key=key)


async def test_approved_card_is_charged_and_recorded():
    bank = SandboxBank(latency_ms=0)
    result = await charge(bank)
    assert isinstance(result, ChargeResult)
    assert (result.amount, result.currency, result.card_last4) == (Decimal("12.50"), "EUR", "4242")
    assert result.reference.startswith("ch_")
    assert bank.charges == [result]


async def test_any_other_valid_card_is_approved():
    bank = SandboxBank(latency_ms=0)
    result = await charge(bank, number="5555555555554444")
    assert result.card_last4 == "4444"
    assert len(bank.charges) == 1


@pytest.mark.parametrize(
    ("number", "error_class", "message"),
    [
        ("4000000000000002", PaymentDeclined, "Your card was declined. Please use another card."),
        ("4000000000009995", InsufficientFunds, "Your card has insufficient funds. Please use another card."),
        (
            "4000000000000119",
            BankUnavailable,
            "The bank could not be reached. You have not been charged; please try again in a moment.",
        ),
    ],
)
async def test_refusal_test_cards_raise_their_error_and_charge_nothing(number, error_class, message):
    bank = SandboxBank(latency_ms=0)
    with pytest.raises(error_class) as raised:
        await charge(bank, number=number)
    assert type(raised.value) is error_class
    assert isinstance(raised.value, PaymentError)
    assert raised.value.message == message
    assert bank.charges == []


async def test_same_idempotency_key_gets_the_same_charge_once():
    bank = SandboxBank(latency_ms=0)
    first = await charge(bank, key="order-7")
    again = await charge(bank, key="order-7")
    other = await charge(bank, key="order-8")
    assert again == first
    assert other.reference != first.reference
    assert bank.charges == [first, other]


async def test_a_key_reused_for_another_amount_is_refused_and_moves_no_money():
    bank = SandboxBank(latency_ms=0)
    first = await charge(bank, key="order-7", amount="12.50")
    with pytest.raises(PaymentError, match="different amount"):
        await charge(bank, key="order-7", amount="99.00")
    assert bank.charges == [first]


async def test_the_ledger_is_shared_by_every_bank_on_the_same_file(tmp_path):
    # Two daphne processes (or one before and after a restart) build their own bank object.
    ledger = tmp_path / "shared-ledger.sqlite3"
    first = await charge(SandboxBank(latency_ms=0, ledger_path=ledger), key="order-7")
    again = await charge(SandboxBank(latency_ms=0, ledger_path=ledger), key="order-7")
    assert again == first
    assert len(SandboxBank(ledger_path=ledger).charges) == 1


async def test_the_bank_records_a_charge_before_it_answers():
    bank = SandboxBank(latency_ms=2000)
    # The shop gives up waiting (a timeout, a crash): the money has moved all the same.
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(charge(bank, key="order-7"), timeout=0.05)
    assert [charge.amount for charge in bank.charges] == [Decimal("12.50")]
    resolved = await bank.resolve_charge(idempotency_key="order-7")
    assert resolved == bank.charges[0]


async def test_resolving_an_unknown_charge_voids_the_key_so_a_late_charge_fails():
    bank = SandboxBank(latency_ms=0)
    assert await bank.resolve_charge(idempotency_key="order-7") is None
    with pytest.raises(PaymentDeclined):
        await charge(bank, key="order-7")
    assert await bank.resolve_charge(idempotency_key="order-7") is None
    assert bank.charges == []


async def test_resolving_a_declined_charge_says_not_charged():
    bank = SandboxBank(latency_ms=0)
    with pytest.raises(PaymentDeclined):
        await charge(bank, number="4000000000000002", key="order-7")
    assert await bank.resolve_charge(idempotency_key="order-7") is None


async def test_same_idempotency_key_gets_the_same_refusal():
    bank = SandboxBank(latency_ms=0)
    with pytest.raises(PaymentDeclined) as first:
        await charge(bank, number="4000000000000002", key="order-7")
    # Retrying the refused key with a good card does not turn the answer into a charge.
    with pytest.raises(PaymentDeclined) as again:
        await charge(bank, number="4242424242424242", key="order-7")
    assert type(again.value) is type(first.value)
    assert bank.charges == []


async def test_concurrent_retries_with_one_key_move_money_once():
    bank = SandboxBank(latency_ms=5)
    results = await asyncio.gather(*(charge(bank, key="order-7") for _ in range(5)))
    assert len({result.reference for result in results}) == 1
    assert len(bank.charges) == 1


async def test_refund_is_idempotent():
    bank = SandboxBank(latency_ms=0)
    captured = await charge(bank)
    refund = await bank.refund(
        charge_reference=captured.reference, amount=Decimal("12.50"), currency="EUR", idempotency_key="refund-1"
    )
    again = await bank.refund(
        charge_reference=captured.reference, amount=Decimal("12.50"), currency="EUR", idempotency_key="refund-1"
    )
    assert isinstance(refund, RefundResult)
    assert refund.reference.startswith("re_")
    assert (refund.amount, refund.currency) == (Decimal("12.50"), "EUR")
    assert again == refund
    assert bank.refunds == [refund]


async def test_charge_awaits_the_bank_and_lets_other_tasks_run_meanwhile():
    bank = SandboxBank(latency_ms=20)
    steps = []

    async def shopper(name: str):
        steps.append(f"{name} asks")
        await charge(bank, key=name)
        steps.append(f"{name} answered")

    await asyncio.gather(shopper("a"), shopper("b"))

    # A bank that blocked the loop would answer "a" before "b" could even ask.
    assert steps[:2] == ["a asks", "b asks"]
    assert sorted(steps[2:]) == ["a answered", "b answered"]
    assert len(bank.charges) == 2


def test_latency_comes_from_the_setting(settings):
    settings.SANDBOX_BANK_LATENCY_MS = 50
    assert SandboxBank().latency_ms == 50
    assert SandboxBank(latency_ms=7).latency_ms == 7


def test_card_shows_only_its_last_four_digits():
    assert APPROVED.last4 == "4242"


# The gateway setting ------------------------------------------------------------------


class RecordingGateway(PaymentGateway):
    """A stand-in for a real provider: approves everything and remembers what it was asked."""

    def __init__(self):
        self.calls: list[dict] = []

    async def charge(self, *, amount, currency, card, idempotency_key):
        self.calls.append({"amount": amount, "currency": currency, "last4": card.last4, "key": idempotency_key})
        return ChargeResult(reference=f"rec_{len(self.calls)}", amount=amount, currency=currency, card_last4=card.last4)

    async def refund(self, *, charge_reference, amount, currency, idempotency_key):
        self.calls.append({"refund": charge_reference, "amount": amount, "key": idempotency_key})
        return RefundResult(reference=f"rec_refund_{len(self.calls)}", amount=amount, currency=currency)


def test_get_gateway_builds_the_class_named_by_the_setting(settings):
    assert type(get_gateway()) is SandboxBank
    settings.PAYMENT_GATEWAY = "tests.test_payments.RecordingGateway"
    get_gateway.cache_clear()
    gateway = get_gateway()
    assert type(gateway) is RecordingGateway
    assert get_gateway() is gateway


async def test_base_gateway_implements_nothing():
    with pytest.raises(NotImplementedError):
        await PaymentGateway().charge(amount=Decimal("1"), currency="EUR", card=APPROVED, idempotency_key="k")


def test_checkout_and_refund_go_through_the_configured_gateway(settings, shopper, make_product):
    settings.PAYMENT_GATEWAY = "tests.test_payments.RecordingGateway"
    get_gateway.cache_clear()
    gateway = get_gateway()
    product = make_product(price="7.25", stock=5)
    services.add_to_cart(cart=services.get_cart(user=shopper, create=True), product=product, quantity=2)
    token = secrets.token_urlsafe(24)

    order = async_to_sync(services.place_order)(user=shopper, checkout_token=token, card=APPROVED)
    services.change_order_status(order=order, status=Order.Status.CANCELLED)

    assert gateway.calls == [
        {"amount": Decimal("14.50"), "currency": "EUR", "last4": "4242", "key": f"checkout-{token}"},
        {"refund": "rec_1", "amount": Decimal("14.50"), "key": f"refund-{order.number}"},
    ]
    assert Payment.objects.get(kind=Payment.Kind.CHARGE).reference == "rec_1"
    assert Payment.objects.get(kind=Payment.Kind.REFUND).reference == "rec_refund_2"
