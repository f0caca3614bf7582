#!/usr/bin/env python3
"""A till's first receipt from Python: register, calculate, confirm, refund over the gateway.

Generates the Python client from proto/ (as kopilka_health.py does), reads the demo terminal
key that `kopilka dev` wrote to <data dir>/demo-keys.env, then against the gateway:

1. CustomerService.RegisterCustomer for a phone (an already registered phone is fine);
2. CheckoutService.Calculate for a coffee at 250.00 from the demo café;
3. CheckoutService.Confirm of the same basket under a fresh receipt id: state CONFIRMED,
   points accrued as calculated, the balance up by exactly that;
4. CheckoutService.Refund of the whole receipt: state REFUNDED, the accrued points reversed,
   the balance back where it was.

Points and money are decimal strings and are compared with the decimal module. Exits non-zero
on any failure.

    python3 clients/python/kopilka_checkout.py --target 127.0.0.1:50051 --data-dir data
"""

import argparse
import importlib
import pathlib
import sys
import tempfile
import time
import uuid
from decimal import Decimal, InvalidOperation

import grpc
from google.protobuf import timestamp_pb2

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from kopilka_health import generate  # noqa: E402  (the same generated client)

PHONE = "+7 912 555-01-01"
COFFEE = "250.00"
TIMEOUT = 10  # seconds per call


class CheckFailed(Exception):
    """An answer that is not what a till expects."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def dec(value: str, what: str) -> Decimal:
    """A decimal string from the API ("" means zero)."""
    try:
        return Decimal(value) if value else Decimal(0)
    except InvalidOperation as err:
        raise CheckFailed(f"{what}: not a decimal string: {value!r}") from err


def points(balance, what: str) -> Decimal:
    """Spendable plus not yet active points of a kopilka.ledger.v1.Balance."""
    check(balance is not None, f"{what}: no balance in the answer")
    return dec(balance.available, f"{what}.available") + dec(balance.pending, f"{what}.pending")


def read_terminal_key(data_dir: pathlib.Path) -> str:
    path = data_dir / "demo-keys.env"
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        sys.exit(f"cannot read the demo keys: {err}")
    for line in lines:
        name, _, value = line.partition("=")
        if name.strip() == "KOPILKA_TERMINAL_KEY" and value.strip():
            return value.strip()
    sys.exit(f"no KOPILKA_TERMINAL_KEY in {path}")


def run(target: str, key: str) -> None:
    gw = importlib.import_module("kopilka.gateway.v1.checkout_pb2")
    gw_grpc = importlib.import_module("kopilka.gateway.v1.checkout_pb2_grpc")
    customers = importlib.import_module("kopilka.gateway.v1.customers_pb2")
    customers_grpc = importlib.import_module("kopilka.gateway.v1.customers_pb2_grpc")
    common = importlib.import_module("kopilka.gateway.v1.common_pb2")
    basket = importlib.import_module("kopilka.type.v1.basket_pb2")
    identifier = importlib.import_module("kopilka.type.v1.identifier_pb2")

    auth = (("authorization", f"Bearer {key}"),)
    state_name = gw.CheckoutState.Name

    with grpc.insecure_channel(target) as channel:
        checkout = gw_grpc.CheckoutServiceStub(channel)
        registry = customers_grpc.CustomerServiceStub(channel)

        # 1. Register (or find) the customer.
        reg = registry.RegisterCustomer(
            customers.RegisterCustomerRequest(
                request_id=f"py-register-{''.join(c for c in PHONE if c.isdigit())}",
                phone=PHONE,
                details=common.CustomerDetails(first_name="Python"),
            ),
            metadata=auth,
            timeout=TIMEOUT,
        )
        customer = reg.customer
        check(bool(customer.customer_id), "RegisterCustomer: no customer id")
        start = points(reg.balance, "RegisterCustomer.balance")
        print(
            f"RegisterCustomer: {customer.customer_id} {customer.phone_masked} "
            f"(new: {customer.registered_now}, start bonus {reg.start_bonus.points or '0'}, "
            f"balance {start})"
        )

        # 2. Calculate: a coffee at 250.00, at a fixed time so Confirm prices it identically.
        buyer = gw.Buyer(identifier=identifier.IdentifierInput(raw=PHONE))
        lines = [
            basket.BasketLine(
                line_id="1",
                product_id="coffee",
                name="Cappuccino",
                category_ids=["coffee"],
                unit_price=COFFEE,
                quantity="1",
            )
        ]
        at = timestamp_pb2.Timestamp()
        at.GetCurrentTime()
        calc = checkout.Calculate(
            gw.CalculateRequest(buyer=buyer, lines=lines, occurred_at=at),
            metadata=auth,
            timeout=TIMEOUT,
        ).calculation
        totals = calc.totals
        accrual = dec(totals.points_accrued, "Calculate.totals.points_accrued")
        print(
            f"Calculate: gross {totals.gross_amount}, discount {totals.discount or '0'}, "
            f"to pay {totals.paid_money or totals.net_amount}, points {accrual} "
            f"(program v{calc.program_version})"
        )
        for line in calc.display_lines:
            print(f"  | {line}")
        check(dec(totals.gross_amount, "gross_amount") == Decimal(COFFEE),
              f"Calculate: gross {totals.gross_amount}, expected {COFFEE}")
        check(accrual > 0, f"Calculate: no points for a {COFFEE} coffee ({accrual})")
        check(calc.customer.customer_id == customer.customer_id,
              f"Calculate: customer {calc.customer.customer_id!r}, expected {customer.customer_id!r}")

        # 3. Confirm under a fresh receipt id.
        receipt_id = f"py-{int(time.time())}-{uuid.uuid4().hex[:8]}"
        confirm = gw.ConfirmRequest(
            request_id=f"{receipt_id}-confirm",
            receipt_id=receipt_id,
            buyer=buyer,
            lines=lines,
            occurred_at=at,
        )
        done = checkout.Confirm(confirm, metadata=auth, timeout=TIMEOUT)
        state = state_name(done.checkout.state)
        accrued = dec(done.checkout.receipt.summary.points_accrued, "Confirm summary.points_accrued")
        after_confirm = points(done.balance, "Confirm.balance")
        print(f"Confirm {receipt_id}: {state}, points accrued {accrued}, balance {after_confirm}")
        for line in done.print_lines:
            print(f"  | {line}")
        check(state == "CHECKOUT_STATE_CONFIRMED", f"Confirm: state {state}")
        check(accrued == accrual, f"Confirm: accrued {accrued}, calculated {accrual}")
        check(after_confirm == start + accrued,
              f"Confirm: balance {after_confirm}, expected {start} + {accrued}")
        again = checkout.Confirm(confirm, metadata=auth, timeout=TIMEOUT)
        check(again.checkout == done.checkout, "Confirm repeated with the same request id: a different answer")
        check(points(again.balance, "repeated Confirm.balance") == after_confirm,
              "Confirm repeated with the same request id: booked twice")

        # 4. Refund the whole receipt.
        refund = checkout.Refund(
            gw.RefundRequest(
                request_id=f"{receipt_id}-refund",
                receipt_id=receipt_id,
                refund_id=f"{receipt_id}-return",
                reason="customer changed their mind",
            ),
            metadata=auth,
            timeout=TIMEOUT,
        )
        state = state_name(refund.checkout.state)
        reversed_points = dec(refund.refund.points_reversed, "Refund.refund.points_reversed")
        after_refund = points(refund.balance, "Refund.balance")
        print(
            f"Refund {receipt_id}: {state}, amount {refund.refund.amount}, "
            f"points reversed {reversed_points}, balance {after_refund}"
        )
        for line in refund.print_lines:
            print(f"  | {line}")
        check(state == "CHECKOUT_STATE_REFUNDED", f"Refund: state {state}")
        refunded = dec(refund.refund.amount, "Refund.refund.amount")
        check(Decimal(0) < refunded <= Decimal(COFFEE),
              f"Refund: amount {refund.refund.amount}, expected the receipt's (up to {COFFEE})")
        check(reversed_points == accrued, f"Refund: reversed {reversed_points}, accrued {accrued}")
        check(after_refund == start, f"Refund: balance {after_refund}, expected {start} again")

        stored = checkout.GetCheckout(
            gw.GetCheckoutRequest(receipt_id=receipt_id), metadata=auth, timeout=TIMEOUT
        ).checkout
        check(state_name(stored.state) == "CHECKOUT_STATE_REFUNDED",
              f"GetCheckout: state {state_name(stored.state)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="the gateway, host:port")
    parser.add_argument("--data-dir", required=True, type=pathlib.Path,
                        help="kopilka dev's data directory (holds demo-keys.env)")
    args = parser.parse_args()
    key = read_terminal_key(args.data_dir)

    with tempfile.TemporaryDirectory() as out:
        generate(pathlib.Path(out))
        sys.path.insert(0, out)
        try:
            run(args.target, key)
        except grpc.RpcError as err:
            print(f"FAILED: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
        except CheckFailed as err:
            print(f"FAILED: {err}", file=sys.stderr)
            return 1
    print("checkout: Calculate -> Confirm -> Refund OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
