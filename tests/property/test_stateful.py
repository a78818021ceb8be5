"""A stateful property test of the whole billing system, through its public entry points only.

Hypothesis drives random interleavings of: account creation (with and without a referral
code), checkouts with every payment method, paying through the sandbox (paid or failed),
provider deliveries re-sent byte for byte (duplicates, and stale events after newer ones),
refunds through the Stripe, Creem and Waffo sandboxes, whole or partial (Stripe's cumulative
totals, Creem's and Waffo's one refund at a time), some held back by the provider and
delivered later (out of order), Stripe disputes and expiries, a refund delivered before the
payment (reordered), a Stripe payment of another amount than the order's (disputed), admin
completion (of such an order too), admin-created redemption codes and redemptions, admin
adjustments (and their retries under the same Idempotency-Key), usage metering (charge,
reserve, settle, release, duplicates, batches) and referral transfers (and their retries),
inviters moving all their rewards to their balance before the invitee's refund, promo grants
(admin adjustments and codes with priority and expiry) and moves of the billing clock that
expire them (the sweeper writes off what they still hold), spend limits (set, replaced,
deleted; per account and per API key, usage carrying key ids). Every example
starts with an inviter, its invitee and a credited order of the invitee, so the refund and
transfer rules always have something to work on.

The model predicts every response and every balance exactly (the credit queue is drained
after each provider delivery, so each step ends in a known state). After EVERY step:
- each account's quota and aff_quota equal the sums of its ledger entries, and its quota,
  held_quota, used_quota and request_count equal the model's;
- every order has the model's status and refunded_money; it has at most one top-up entry (of
  its quota) and exactly one iff it was credited, and its reversal steps take back exactly
  floor(quota x R / P) after refunds totalling R of P (all of it once refunded or disputed);
- no debit leaves a balance below zero unless it settles usage or reverses a credit;
- aff_quota moves only by referral rebate, clawback (reversal) and transfer; a clawback the
  inviter's aff_quota cannot cover comes from its quota;
- credit grants: sum(grants.remaining) == quota == sum(ledger deltas); every quota entry
  carries grants summing to its delta, each grant's remaining is the sum of its deltas, no
  grant but the overdraft is negative, and none that expired still holds quota.
- each spend-limit window's counter equals the model's and the sum of what its usage records
  count in it (charged or settled quota, open holds); a charge or reserve never takes it
  above its limit (only settles, or a limit lowered below the spend, leave it above).
  Limits here are `total` ones, so that the windows do not depend on when the test runs.
At the end of each example, the reconciliation (billing.ops.reconciliation) of every account of
the example must find no difference.

Sizes: the `stateful-ci` profile (default) keeps this to a few minutes; `make soak` runs the
`stateful-soak` profile (STATEFUL_PROFILE=soak). Adding a behaviour is one @rule method that
acts through the API and updates the model.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from fractions import Fraction
from typing import Any, ClassVar

from hypothesis import HealthCheck, Phase, settings
from hypothesis import event as tally
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.support.api import (
    UNIT,
    Api,
    Tables,
    User,
    drain,
    pay,
    plain,
    post_stripe,
    replay_notification,
    session_id,
    stripe_refund,
)
from tests.support.payments import session_event
from tests.support.reconcile import check_stack_account
from tests.support.stack import ROOT, LocalStack

settings.register_profile(
    "stateful-ci",
    max_examples=int(os.environ.get("STATEFUL_EXAMPLES", "8")),
    stateful_step_count=int(os.environ.get("STATEFUL_STEPS", "20")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    # CI reports the failing program as found (every step is printed); the soak shrinks it.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    print_blob=True,
)
settings.register_profile(
    "stateful-soak",
    max_examples=int(os.environ.get("STATEFUL_EXAMPLES", "150")),
    stateful_step_count=int(os.environ.get("STATEFUL_STEPS", "50")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    print_blob=True,
)
PROFILE = f"stateful-{os.environ.get('STATEFUL_PROFILE', 'ci')}"

REFERRAL = json.loads((ROOT / "settings" / "local.json").read_text())["referral"]
REBATE_PERCENT = Decimal(str(REFERRAL.get("rebate_percent", "0")))
INVITEE_BONUS = int(REFERRAL.get("invitee_bonus", 0))
INVITER_BONUS = int(REFERRAL.get("inviter_bonus", 0))
MIN_TRANSFER = int(REFERRAL.get("min_transfer", UNIT))
METHODS = ("stripe", "epay", "creem", "waffo")
REFUNDABLE = {"stripe", "creem", "waffo"}  # the sandboxes that can send a refund
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "free-model", "dall-e-3")
KEY_IDS = st.sampled_from([None, "k1", "k2", "k3"])
MAX_USERS = 4
MAX_ORDERS = 7
REDEEM_FAILURE_BUDGET = 8  # below the limit (10 per user and per address)
TRANSFERS = (ROOT / "functions" / "referral_transfer" / "app.py").exists()

# A promo grant's optional terms (API.md "Credit grants"), whole days so clock moves in hours
# never land within seconds of an expiry.
GRANT_FIELDS = {"priority": st.integers(0, 100), "expires_in_days": st.integers(1, 3)}

# What each delivery means for an order (billing.payments.crediting): the kind of event it carries.
PAID, FAILED, EXPIRED, REFUNDED, DISPUTED = "paid", "failed", "expired", "refunded", "disputed"


@dataclass
class MUser:
    user: User
    aff_code: str
    quota: int
    held: int = 0
    used: int = 0
    requests: int = 0
    aff_quota: int = 0
    aff_history: int = 0
    inviter: MUser | None = None
    paid_orders: int = 0
    redeem_failures: int = 0
    settled: set[str] = field(default_factory=set)  # request ids whose settle may go negative
    limits: dict[str, int] = field(default_factory=dict)  # scope -> max_quota (period total)
    spent: dict[str, int] = field(default_factory=dict)  # counter key -> spend

    @property
    def user_id(self) -> str:
        return self.user.user_id


@dataclass(frozen=True)
class MRefund:
    """What one refund notification says: Stripe's total so far, or one refund with its id."""

    minor: int  # the cumulative total (Stripe) or this refund's amount
    cumulative: bool
    full: bool  # the provider says nothing is left (Stripe refunded, Waffo fully, Creem all)
    refund_id: str | None = None


@dataclass
class Delivery:
    kind: str
    stripe_event: str | None = None  # Stripe: redelivered by event id
    notification: str | None = None  # the others: their recorded notification
    refund: MRefund | None = None


@dataclass
class MOrder:
    api_order: dict[str, Any]
    owner: MUser
    method: str
    quota: int
    status: str = "pending"
    credited: bool = False
    intent_stored: bool = False  # a Stripe dispute finds the order by its payment intent
    rebate: int = 0  # what the owner's inviter earned on it
    paid_bonuses: bool = False  # its credit paid the first-order bonuses
    sandbox: str = "open"  # the provider's side: open, paid, failed, expired, mismatched
    mismatch: bool = False  # disputed: the provider took another amount (an admin may complete)
    sandbox_refunded: int = 0  # minor units the provider has refunded (delivered or held)
    refunded: int = 0  # minor units our order counts as refunded (refunded_money)
    complete: bool = False  # all of its credit taken back (refunded in full, or disputed)
    counted: set[str] = field(default_factory=set)  # provider refund ids counted
    deliveries: list[Delivery] = field(default_factory=list)
    held: list[Delivery] = field(default_factory=list)  # recorded by the provider, not sent

    @property
    def order_id(self) -> str:
        return str(self.api_order["order_id"])

    @property
    def paid_minor(self) -> int:
        return int(Decimal(self.api_order["pay_money"]) * 100)  # USD and CNY: two decimals

    def ratio(self) -> Fraction:
        return Fraction(1) if self.complete else Fraction(self.refunded, self.paid_minor)

    @property
    def reversed_quota(self) -> int:
        return share(self.quota, self.ratio()) if self.credited else 0


def share(total: int, ratio: Fraction) -> int:
    """floor(total x ratio), all of it at 1: the proportional reversal (API.md)."""
    return total if ratio >= 1 else total * ratio.numerator // ratio.denominator


@dataclass
class MCode:
    text: str
    quota: int
    max_uses: int
    redeemers: set[str] = field(default_factory=set)


@dataclass
class MRequest:
    owner: MUser
    status: str  # charged, reserved, settled, released
    hold: int = 0
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    counters: list[str] = field(default_factory=list)  # spend-limit counters it counts in


class BillingMachine(RuleBasedStateMachine):
    stack: ClassVar[LocalStack]

    def __init__(self) -> None:
        super().__init__()
        self.api = Api(self.stack)  # a source address of its own (redeem failure limit)
        self.tables = Tables(self.stack)
        self.admin = self.api.admin_token()
        self.users: list[MUser] = []
        self.orders: list[MOrder] = []
        self.codes: list[MCode] = []
        self.requests: dict[str, MRequest] = {}
        # key -> (user, delta, applied, grant object)
        self.adjustments: dict[str, tuple[MUser, int, bool, Any]] = {}
        self.transfers: dict[str, tuple[MUser, int, bool]] = {}
        self.replies: dict[str, Any] = {}  # Idempotency-Key -> the first 200 body it answered
        self.address_failures = 0
        self._grants: dict[str, dict[str, Any]] = {}  # user -> grants map as last checked

    # ------------------------------------------------------------ accounts

    def _create(self, inviter: MUser | None) -> MUser:
        user = self.api.new_user(inviter.aff_code if inviter else None, prefix="prop")
        created = user.created
        assert created["inviter_id"] == (inviter.user_id if inviter else None)
        # Bonuses come with the first paid order, never at sign-up.
        assert (created["quota"], created["aff_quota"]) == (0, 0), created
        model = MUser(user, created["aff_code"], quota=0, inviter=inviter)
        self.users.append(model)
        return model

    @initialize(method=st.sampled_from(sorted(REFUNDABLE)), amount=st.integers(10, 30))
    def two_users_and_a_paid_order(self, method: str, amount: int) -> None:
        """An inviter, its invitee, and a credited order of the invitee (a rebate for the
        inviter): every example has something to refund and a reward to transfer first,
        whatever rules it leaves out."""
        first = self._create(None)
        invited = self._create(first)
        order = self._checkout(invited, method, amount)
        self._pay(order, "paid")

    @precondition(lambda self: len(self.users) < MAX_USERS)
    @rule(invited=st.booleans(), data=st.data())
    def create_account(self, invited: bool, data: st.DataObject) -> None:
        inviter = data.draw(st.sampled_from(self.users)) if invited else None
        self._create(inviter)

    @rule(data=st.data())
    def create_account_again(self, data: st.DataObject) -> None:
        """POST /account for an existing account: 200, unchanged, referral code ignored."""
        user = data.draw(st.sampled_from(self.users))
        other = data.draw(st.sampled_from(self.users))
        response = user.user.call("POST", "/account", json={"referral_code": other.aff_code})
        assert response.status_code == 200, response.text
        assert response.json()["inviter_id"] == user.user.created["inviter_id"]

    # ------------------------------------------------------------ top-ups

    @precondition(lambda self: len(self.orders) < MAX_ORDERS)
    @rule(method=st.sampled_from(METHODS), amount=st.integers(1, 30), data=st.data())
    def checkout(self, method: str, amount: int, data: st.DataObject) -> None:
        self._checkout(data.draw(st.sampled_from(self.users)), method, amount)

    def _checkout(self, owner: MUser, method: str, amount: int) -> MOrder:
        order = owner.user.checkout(method, amount)
        assert order["status"] == "pending" and order["method"] == method
        quota = 5_000_000 if method == "creem" else amount * UNIT
        assert order["quota"] == quota
        self.orders.append(MOrder(order, owner, method, quota))
        return self.orders[-1]

    def _orders(self, predicate: Any) -> list[MOrder]:
        return [order for order in self.orders if predicate(order)]

    def _credit(self, order: MOrder) -> None:
        """The credit of an order: its quota, and the referral rebate and first-order bonuses
        of an invited owner (billing.referral.rewards), in the same transaction."""
        owner, inviter = order.owner, order.owner.inviter
        order.status, order.credited = "paid", True
        owner.quota += order.quota
        if inviter is not None:
            if owner.paid_orders == 0:
                order.paid_bonuses = True
                owner.quota += INVITEE_BONUS
                inviter.aff_quota += INVITER_BONUS
                inviter.aff_history += INVITER_BONUS
            order.rebate = int(
                (Decimal(order.quota) * REBATE_PERCENT / 100).to_integral_value(rounding=ROUND_DOWN)
            )
            inviter.aff_quota += order.rebate
            inviter.aff_history += order.rebate
        owner.paid_orders += 1

    def _apply(self, order: MOrder, kind: str, refund: MRefund | None = None) -> None:
        """The model of billing.payments.crediting: what one delivered event does to an order."""
        tally(f"delivery: {kind} on {order.status} ({order.method})")
        if kind == PAID:
            if order.status == "pending":
                self._credit(order)
            if order.credited:
                order.intent_stored = True  # also learned by an order completed by hand
        elif kind in (FAILED, EXPIRED):
            if order.status == "pending":
                order.status = kind
        elif kind == DISPUTED:
            assert order.intent_stored  # never sent otherwise: it would wait in the DLQ
            if order.status == "paid":
                self._reverse(order, order.refunded, complete=True)
                order.status = DISPUTED
        else:
            assert refund is not None
            self._apply_refund(order, refund)

    def _apply_refund(self, order: MOrder, refund: MRefund) -> None:
        if order.status == "pending":
            assert refund.full  # a partial one would wait for the payment (then the DLQ)
            order.status, order.refunded = REFUNDED, order.paid_minor  # closed, never paid
            return
        if order.status != "paid" or order.complete:
            return  # never credited, or nothing left: nothing to take back
        if refund.refund_id is not None and refund.refund_id in order.counted:
            return
        if refund.full:
            total = order.paid_minor
        elif refund.cumulative:
            total = refund.minor
        else:
            total = order.refunded + refund.minor
        total = min(total, order.paid_minor)
        if total <= order.refunded:
            return  # a stale or repeated total
        if refund.refund_id is not None:
            order.counted.add(refund.refund_id)
        self._reverse(order, total, complete=total == order.paid_minor)
        if order.complete:
            order.status = REFUNDED

    def _reverse(self, order: MOrder, refunded: int, *, complete: bool) -> None:
        """One reversal step: the owner's quota, the inviter's rebate in proportion (from
        aff_quota, the rest from quota), and once complete, the bonuses the order paid."""
        before_quota, before_ratio = order.reversed_quota, order.ratio()
        order.refunded, order.complete = refunded, complete
        owner, inviter = order.owner, order.owner.inviter
        owner.quota -= order.reversed_quota - before_quota
        takes: list[int] = []
        if inviter is not None and order.rebate:
            takes.append(share(order.rebate, order.ratio()) - share(order.rebate, before_ratio))
        if complete and order.paid_bonuses:
            owner.quota -= INVITEE_BONUS
            if inviter is not None:
                takes.append(INVITER_BONUS)
        if inviter is None:
            return
        available = max(inviter.aff_quota, 0)
        for amount in takes:
            from_aff = min(amount, available)
            available -= from_aff
            inviter.aff_quota -= from_aff
            inviter.quota -= amount - from_aff
            inviter.aff_history -= amount
            if amount > from_aff:
                tally("clawback: from quota (transferred)")

    def _delivered(
        self,
        order: MOrder,
        kind: str,
        result: dict[str, Any],
        refund: MRefund | None = None,
        *,
        held: bool = False,
    ) -> None:
        assert "error" not in result, result
        delivery = Delivery(
            kind,
            result.get("event_id") if order.method == "stripe" else None,
            result.get("notification_id"),
            refund,
        )
        if held:
            order.held.append(delivery)
            return
        assert result["webhook_status"] == 200, result
        order.deliveries.append(delivery)
        drain(self.stack)
        self._apply(order, kind, refund)

    @precondition(lambda self: any(o.sandbox == "open" for o in self.orders))
    @rule(outcome=st.sampled_from(["paid", "paid", "failed"]), data=st.data())
    def pay_in_sandbox(self, outcome: str, data: st.DataObject) -> None:
        self._pay(data.draw(st.sampled_from(self._orders(lambda o: o.sandbox == "open"))), outcome)

    def _pay(self, order: MOrder, outcome: str) -> None:
        result = pay(self.api, order.order_id, outcome)
        order.sandbox = outcome
        if outcome == "failed" and order.method in ("epay", "creem"):
            # These providers send nothing for an unpaid checkout.
            assert result.get("webhook_status") is None, result
            return
        self._delivered(order, PAID if outcome == "paid" else FAILED, result)

    @precondition(lambda self: any(o.deliveries for o in self.orders))
    @rule(data=st.data())
    def replay_delivery(self, data: st.DataObject) -> None:
        """A provider delivers a recorded event again (a duplicate, or stale after newer)."""
        order = data.draw(st.sampled_from(self._orders(lambda o: bool(o.deliveries))))
        delivery = data.draw(st.sampled_from(order.deliveries))
        if delivery.stripe_event is not None:
            response = self.api.sandbox("POST", f"/stripe/redeliver/{delivery.stripe_event}")
            assert response.status_code == 200 and response.json()["webhook_status"] == 200
        else:
            sent = self.api.sandbox("GET", f"/{order.method}/notifications/{order.order_id}")
            [notification] = [n for n in sent.json()["items"] if n["id"] == delivery.notification]
            reply = replay_notification(self.api, notification)
            assert reply.status_code == 200, reply.text
            if order.method == "epay":
                assert reply.text == "success"
        drain(self.stack)
        self._apply(order, delivery.kind, delivery.refund)

    @staticmethod
    def _refundable(order: MOrder) -> bool:
        if order.sandbox_refunded >= order.paid_minor:
            return False  # the provider has nothing left to refund
        if order.method == "waffo":
            return True  # Waffo's sandbox refunds whatever the order's state
        return order.method in REFUNDABLE and order.sandbox == "paid"

    def _send_refund(
        self, order: MOrder, minor: int | None, *, deliver: bool = True
    ) -> tuple[dict[str, Any], MRefund]:
        """Refund `minor` more (None: all that is left) through the order's sandbox."""
        left = order.paid_minor - order.sandbox_refunded
        amount = left if minor is None else minor
        query = "" if deliver else "?deliver=false"
        if order.method == "stripe":
            body: dict[str, Any] = {"type": "charge.refunded", "amount": amount}
            path = f"/stripe/events/{session_id(order.api_order)}{query}"
        elif order.method == "creem":
            body = {"type": "refund.created", "amount": amount}
            path = f"/creem/events/{order.order_id}{query}"
        else:
            body = {"refundAmount": f"{amount // 100}.{amount % 100:02d}"}
            path = f"/waffo/refund/{order.order_id}{query}"
        response = self.api.sandbox("POST", path, json=body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        order.sandbox_refunded += amount
        everything = order.sandbox_refunded == order.paid_minor
        if order.method == "stripe":
            refund = MRefund(order.sandbox_refunded, cumulative=True, full=everything)
        else:
            # Creem: full only when this one refund is the whole order; Waffo: fully refunded
            # once the provider's total reached it.
            full = amount == order.paid_minor if order.method == "creem" else everything
            refund = MRefund(amount, cumulative=False, full=full, refund_id=uuid.uuid4().hex)
        return result, refund

    def _refund_amounts(self, order: MOrder) -> st.SearchStrategy[int | None]:
        left = order.paid_minor - order.sandbox_refunded
        if order.status != "paid" or left < 2:
            return st.none()  # a partial refund of an uncredited order waits in the DLQ
        return st.one_of(st.none(), st.integers(1, left - 1))

    @precondition(lambda self: any(self._refundable(o) for o in self.orders))
    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        """A refund, whole or partial, as the order's provider sends it."""
        order = data.draw(st.sampled_from(self._orders(self._refundable)))
        minor = data.draw(self._refund_amounts(order))
        tally(f"refund: {'all that is left' if minor is None else 'partial'} ({order.method})")
        result, refund = self._send_refund(order, minor)
        self._delivered(order, REFUNDED, result, refund)

    @precondition(lambda self: any(self._refundable(o) and o.status == "paid" for o in self.orders))
    @rule(data=st.data())
    def refund_held_back(self, data: st.DataObject) -> None:
        """The provider refunds, but its notification is late (delivered by a later rule)."""
        order = data.draw(
            st.sampled_from(self._orders(lambda o: self._refundable(o) and o.status == "paid"))
        )
        minor = data.draw(self._refund_amounts(order))
        result, refund = self._send_refund(order, minor, deliver=False)
        self._delivered(order, REFUNDED, result, refund, held=True)

    @precondition(lambda self: any(o.held for o in self.orders))
    @rule(data=st.data())
    def held_refund_arrives(self, data: st.DataObject) -> None:
        """A late refund notification arrives, after the ones sent since (out of order)."""
        order = data.draw(st.sampled_from(self._orders(lambda o: bool(o.held))))
        delivery = order.held.pop(data.draw(st.integers(0, len(order.held) - 1)))
        ident = delivery.stripe_event or delivery.notification
        response = self.api.sandbox("POST", f"/{order.method}/redeliver/{ident}")
        assert response.status_code == 200 and response.json()["webhook_status"] == 200
        order.deliveries.append(delivery)
        drain(self.stack)
        tally(f"late refund on {order.status} ({order.method})")
        self._apply(order, REFUNDED, delivery.refund)

    @precondition(
        lambda self: any(
            o.method == "stripe" and o.sandbox == "paid" and o.intent_stored for o in self.orders
        )
    )
    @rule(data=st.data())
    def stripe_dispute(self, data: st.DataObject) -> None:
        order = data.draw(
            st.sampled_from(
                self._orders(
                    lambda o: o.method == "stripe" and o.sandbox == "paid" and o.intent_stored
                )
            )
        )
        path = f"/stripe/events/{session_id(order.api_order)}"
        response = self.api.sandbox("POST", path, json={"type": "charge.dispute.created"})
        assert response.status_code == 200, response.text
        self._delivered(order, DISPUTED, response.json())

    @precondition(
        lambda self: any(o.method == "stripe" and o.sandbox == "open" for o in self.orders)
    )
    @rule(data=st.data())
    def stripe_session_expires(self, data: st.DataObject) -> None:
        order = data.draw(
            st.sampled_from(self._orders(lambda o: o.method == "stripe" and o.sandbox == "open"))
        )
        path = f"/stripe/events/{session_id(order.api_order)}"
        response = self.api.sandbox("POST", path, json={"type": "checkout.session.expired"})
        assert response.status_code == 200, response.text
        order.sandbox = "expired"
        self._delivered(order, EXPIRED, response.json())

    @precondition(
        lambda self: any(o.method == "stripe" and o.sandbox == "open" for o in self.orders)
    )
    @rule(data=st.data())
    def stripe_refund_before_payment(self, data: st.DataObject) -> None:
        """Reordered: the refund of a payment arrives before the payment itself."""
        order = data.draw(
            st.sampled_from(self._orders(lambda o: o.method == "stripe" and o.sandbox == "open"))
        )
        response = post_stripe(self.api, stripe_refund(order.api_order))
        assert response.status_code == 200, response.text
        drain(self.stack)
        self._apply(order, REFUNDED, MRefund(order.paid_minor, cumulative=True, full=True))

    @precondition(
        lambda self: any(o.method == "stripe" and o.sandbox == "open" for o in self.orders)
    )
    @rule(data=st.data())
    def stripe_pays_another_amount(self, data: st.DataObject) -> None:
        """Stripe reports a payment of one cent more than the order: disputed, nothing
        credited (its sandbox session never saw that payment: no more sandbox events)."""
        order = data.draw(
            st.sampled_from(self._orders(lambda o: o.method == "stripe" and o.sandbox == "open"))
        )
        body = session_event(order.api_order, amount_total=order.paid_minor + 1)
        assert post_stripe(self.api, body).status_code == 200
        drain(self.stack)
        order.sandbox = "mismatched"
        if order.status == "pending":
            order.status, order.mismatch = DISPUTED, True

    @rule(data=st.data())
    def admin_completes(self, data: st.DataObject) -> None:
        if not self.orders:
            return
        order = data.draw(st.sampled_from(self.orders))
        response = self.api.call("POST", f"/admin/topups/{order.order_id}/complete", self.admin)
        if order.status == REFUNDED or (order.status == DISPUTED and not order.mismatch):
            assert response.status_code == 409, response.text
            assert response.json()["error"]["code"] == "order_not_completable"
            return
        assert response.status_code == 200, response.text
        if order.status != "paid":
            self._credit(order)
        assert response.json()["status"] == "paid"

    # ------------------------------------------------------------ redemption codes

    @precondition(lambda self: len(self.codes) < 4)
    @rule(
        quota=st.integers(1, 3 * UNIT),
        max_uses=st.integers(1, 3),
        grant=st.none() | st.fixed_dictionaries({}, optional=GRANT_FIELDS),
    )
    def admin_creates_code(self, quota: int, max_uses: int, grant: dict[str, int] | None) -> None:
        body: dict[str, Any] = {
            "name": f"prop-{uuid.uuid4().hex[:6]}",
            "quota": quota,
            "count": 1,
            "max_uses": max_uses,
        }
        if grant is not None:
            body["grant"] = grant  # a promo code: its quota may expire, drawn by priority
        response = self.api.call("POST", "/admin/redemption-codes", self.admin, json=body)
        assert response.status_code == 201, response.text
        [text] = response.json()["codes"]
        self.codes.append(MCode(text, quota, max_uses))

    def _redeem(self, user: MUser, code: MCode | None) -> None:
        text = code.text if code else f"GUESS-{uuid.uuid4().hex[:12].upper()}"
        response = user.user.call("POST", "/redeem", json={"code": text})
        tally(f"redeem: {response.status_code}")
        if (
            code is not None
            and len(code.redeemers) < code.max_uses
            and user.user_id not in code.redeemers
        ):
            assert response.status_code == 200, response.text
            code.redeemers.add(user.user_id)
            user.quota += code.quota
            assert response.json() == {"quota_added": code.quota, "quota": user.quota}
        else:
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == "redeem_failed"
            user.redeem_failures += 1
            self.address_failures += 1

    def _may_fail_redeem(self) -> list[MUser]:
        if self.address_failures >= REDEEM_FAILURE_BUDGET:
            return []
        return [u for u in self.users if u.redeem_failures < REDEEM_FAILURE_BUDGET]

    @precondition(lambda self: bool(self.codes) and bool(self._may_fail_redeem()))
    @rule(data=st.data())
    def redeem(self, data: st.DataObject) -> None:
        user = data.draw(st.sampled_from(self._may_fail_redeem()))
        self._redeem(user, data.draw(st.sampled_from(self.codes)))

    @precondition(lambda self: bool(self._may_fail_redeem()))
    @rule(data=st.data())
    def redeem_a_guess(self, data: st.DataObject) -> None:
        self._redeem(data.draw(st.sampled_from(self._may_fail_redeem())), None)

    @precondition(
        lambda self: (
            self.address_failures < REDEEM_FAILURE_BUDGET and any(c.redeemers for c in self.codes)
        )
    )
    @rule(data=st.data())
    def redeem_again(self, data: st.DataObject) -> None:
        """A user redeems a code it has redeemed already (once per user, whatever max_uses)."""
        code = data.draw(st.sampled_from([c for c in self.codes if c.redeemers]))
        users = [u for u in self.users if u.user_id in code.redeemers]
        user = data.draw(st.sampled_from(users))
        if user.redeem_failures < REDEEM_FAILURE_BUDGET:
            self._redeem(user, code)

    # ------------------------------------------------------------ admin adjustments

    def _adjust(self, user: MUser, delta: int, key: str, applied: bool, grant: Any = None) -> None:
        body: dict[str, Any] = {"delta": delta, "reason": "property test"}
        if grant is not None:
            body["grant"] = grant
        response = self.api.call(
            "POST",
            f"/admin/accounts/{user.user_id}/adjust",
            self.admin,
            json=body,
            headers={"Idempotency-Key": key},
        )
        if applied:
            assert response.status_code == 200, response.text  # a retry: nothing changes
            assert response.json() == self.replies[key]  # ... and its first result again
        elif delta < 0 and user.quota - user.held + delta < 0:
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == "insufficient_quota"
        else:
            assert response.status_code == 200, response.text
            user.quota += delta
            applied = True
            self.replies[key] = response.json()
            assert response.json()["quota"] == user.quota
        tally(f"adjust: {response.status_code} ({'retry' if key in self.adjustments else 'new'})")
        self.adjustments[key] = (user, delta, applied, grant)

    @rule(delta=st.integers(-3 * UNIT, 3 * UNIT).filter(bool), data=st.data())
    def admin_adjusts(self, delta: int, data: st.DataObject) -> None:
        self._adjust(data.draw(st.sampled_from(self.users)), delta, uuid.uuid4().hex, False)

    @precondition(lambda self: bool(self.adjustments))
    @rule(data=st.data())
    def admin_retries_an_adjustment(self, data: st.DataObject) -> None:
        """The same request again under its Idempotency-Key (a client retry): applied once."""
        key = data.draw(st.sampled_from(sorted(self.adjustments)))
        user, delta, applied, grant = self.adjustments[key]
        self._adjust(user, delta, key, applied, grant)

    @rule(
        delta=st.integers(1, 3 * UNIT),
        grant=st.fixed_dictionaries({}, optional=GRANT_FIELDS),
        data=st.data(),
    )
    def admin_grants_promo(self, delta: int, grant: dict[str, int], data: st.DataObject) -> None:
        """A promo grant (priority, expiry in days) by admin adjustment."""
        self._adjust(data.draw(st.sampled_from(self.users)), delta, uuid.uuid4().hex, False, grant)

    # ------------------------------------------------------------ the billing clock

    @precondition(
        lambda self: (
            all(o.status != "pending" for o in self.orders)
            and all(r.status != "reserved" for r in self.requests.values())
        )
    )
    @rule(hours=st.integers(1, 80))
    def clock_moves(self, hours: int) -> None:
        """Billing time moves on (POST /_local/clock; the sweeper runs): each grant that has
        expired by then is written off, what it still held leaves the balance. (No pending
        order or open hold then: their lifetimes are other rules' business.)"""
        moved = self.stack.advance_clock(hours * 3600)
        now = self.stack.billing_now().timestamp()
        tally(f"clock: {hours} h")
        for user in self.users:
            before = self._grants.get(user.user_id, {})
            gone = sum(
                g["r"]
                for g in before.values()
                if g.get("e") is not None and g["e"] <= now and g["r"] > 0
            )
            if gone:
                tally("clock: a grant expired with quota left")
            user.quota -= gone
        assert moved["offset_seconds"] > 0

    # ------------------------------------------------------------ metering

    def _event(
        self,
        user: MUser,
        action: str,
        request_id: str,
        model: str,
        tokens: tuple[int, int],
        key_id: str | None = None,
    ) -> dict[str, Any]:
        event = {
            "action": action,
            "request_id": request_id,
            "user_id": user.user_id,
            "model": model,
            "prompt_tokens": tokens[0],
            "completion_tokens": tokens[1],
        }
        if key_id is not None:
            event["key_id"] = key_id
        return event

    @staticmethod
    def _in_force(user: MUser, key_id: str | None) -> list[str]:
        scopes = ["account"] + ([f"key:{key_id}"] if key_id else [])
        return [f"{scope}#total" for scope in scopes if scope in user.limits]

    def _expect(self, user: MUser, event: dict[str, Any], result: dict[str, Any]) -> None:
        """Check one metering result against the model, then update the model."""
        action, rid = event["action"], event["request_id"]
        record = self.requests.get(rid)
        assert result["request_id"] == rid
        tally(f"meter: {action} -> {result['status']} {result.get('error', '')}")
        if record is not None and action in record.results:
            first = record.results[action]
            assert result["status"] == "duplicate", result
            assert (result["quota"], result["balance"]) == (first["quota"], first["balance"])
            return
        # A charge is a request of its own: a request id used by another action (or a hold
        # action on a charged request) is refused and changes nothing.
        if record is not None and (action == "charge" or record.status == "charged"):
            assert (result["status"], result.get("error")) == ("rejected", "invalid_event"), result
            return
        # Any delivery order holds (API.md): a reserve or release after the request was
        # closed changes nothing, the duplicate of what closed it.
        if record is not None and record.status != "reserved" and action != "settle":
            closing = record.results["settle" if record.status == "settled" else "release"]
            assert result["status"] == "duplicate", result
            assert (result["quota"], result["balance"]) == (closing["quota"], closing["balance"])
            return
        price = int(result["quota"])
        in_force = self._in_force(user, event.get("key_id"))
        if action in ("charge", "reserve"):
            if price > 0 and user.quota - user.held - price < 0:
                assert (result["status"], result.get("error")) == (
                    "rejected",
                    "insufficient_quota",
                ), result
                return
            over = [
                key
                for key in in_force
                if price > 0 and user.spent.get(key, 0) + price > user.limits[key.split("#")[0]]
            ]
            if over:
                assert (result["status"], result.get("error")) == ("rejected", "limit_exceeded")
                assert f"{result['limit']}#total" in over, (result, over)
                return
            counted = in_force if price > 0 else []
            for key in counted:
                user.spent[key] = user.spent.get(key, 0) + price
            if action == "charge":
                user.quota -= price
                user.used += price
                user.requests += 1
                record = MRequest(user, "charged", counters=counted)
            else:
                user.held += price
                record = MRequest(user, "reserved", hold=price, counters=counted)
            self.requests[rid] = record
        else:
            # A settle bills the usage whatever came before (over the hold if one is open,
            # in full otherwise); a release with no hold before it closes the request.
            hold = record.hold if record is not None else 0
            user.held -= hold
            # A settle or release of an open hold moves the counters its reserve counted in;
            # a settle with no hold counts in the limits in force now.
            reserved = record is not None and record.status == "reserved"
            moved = record.counters if reserved and record is not None else []
            if action == "settle" and not reserved:
                moved = in_force
            delta = (price - hold) if action == "settle" else -hold
            for key in moved:
                user.spent[key] = user.spent.get(key, 0) + delta
            if action == "settle":
                user.quota -= price
                user.used += price
                user.requests += 1
                user.settled.add(rid)
            else:
                assert price == hold
            if record is None:
                record = self.requests[rid] = MRequest(user, "released")
            record.status = "settled" if action == "settle" else "released"
            record.hold = 0
            record.counters = list(moved) if action == "settle" else record.counters
        assert (
            result["status"]
            == {
                "charge": "charged",
                "reserve": "reserved",
                "settle": "settled",
                "release": "released",
            }[action]
        ), result
        assert result["balance"] == user.quota, (result, user.quota)
        record.results[action] = result

    tokens = st.tuples(st.integers(0, 30_000), st.integers(0, 30_000))

    @rule(
        action=st.sampled_from(["charge", "charge", "reserve"]),
        model=st.sampled_from(MODELS),
        tokens=tokens,
        data=st.data(),
    )
    def meter_new_request(
        self, action: str, model: str, tokens: tuple[int, int], data: st.DataObject
    ) -> None:
        user = data.draw(st.sampled_from(self.users))
        key_id = data.draw(KEY_IDS)
        event = self._event(user, action, uuid.uuid4().hex, model, tokens, key_id)
        self._expect(user, event, self.api.meter(event))

    @precondition(lambda self: bool(self.requests))
    @rule(
        action=st.sampled_from(["settle", "settle", "release", "charge", "reserve"]),
        model=st.sampled_from(MODELS),
        tokens=tokens,
        data=st.data(),
    )
    def meter_known_request(
        self, action: str, model: str, tokens: tuple[int, int], data: st.DataObject
    ) -> None:
        """Settle or release a hold, or send an action again (duplicates, wrong states)."""
        rid = data.draw(st.sampled_from(sorted(self.requests)))
        user = self.requests[rid].owner
        event = self._event(user, action, rid, model, tokens)
        self._expect(user, event, self.api.meter(event))

    @rule(count=st.integers(2, 5), model=st.sampled_from(MODELS), tokens=tokens, data=st.data())
    def meter_batch(
        self, count: int, model: str, tokens: tuple[int, int], data: st.DataObject
    ) -> None:
        """One invocation with several charges (aggregated per account by the domain)."""
        owners = [data.draw(st.sampled_from(self.users)) for _ in range(count)]
        events = [
            self._event(u, "charge", uuid.uuid4().hex, model, tokens, data.draw(KEY_IDS))
            for u in owners
        ]
        results = self.api.meter({"events": events})["results"]
        assert len(results) == count
        for user, event, result in zip(owners, events, results, strict=True):
            self._expect(user, event, result)

    # ------------------------------------------------------------ spend limits

    @rule(
        scope=st.sampled_from(["account", "key:k1", "key:k2"]),
        max_quota=st.one_of(st.integers(0, 200_000), st.integers(0, 3 * UNIT)),
        data=st.data(),
    )
    def set_limit(self, scope: str, max_quota: int, data: st.DataObject) -> None:
        """Set or replace a limit (a `total` one keeps its window's spend)."""
        user = data.draw(st.sampled_from(self.users))
        response = user.user.call(
            "PUT", f"/limits/{scope}", json={"max_quota": max_quota, "period": "total"}
        )
        assert response.status_code == 200, response.text
        user.limits[scope] = max_quota
        spent = user.spent.get(f"{scope}#total", 0)
        assert (response.json()["max_quota"], response.json()["spent"]) == (max_quota, spent)
        tally("limit set")

    @precondition(lambda self: any(u.limits for u in self.users))
    @rule(data=st.data())
    def delete_limit(self, data: st.DataObject) -> None:
        user = data.draw(st.sampled_from([u for u in self.users if u.limits]))
        scope = data.draw(st.sampled_from(sorted(user.limits)))
        response = user.user.call("DELETE", f"/limits/{scope}")
        assert response.status_code == 200 and response.json()["deleted"] is True, response.text
        del user.limits[scope]
        tally("limit deleted")

    @invariant()
    def limit_windows(self) -> None:
        client, names = self.tables.client, self.tables.names
        for user in self.users:
            pages = client.get_paginator("scan").paginate(
                TableName=names["LimitWindowsTable"],
                FilterExpression="begins_with(window_key, :u)",
                ExpressionAttributeValues={":u": {"S": f"{user.user_id}#"}},
                ConsistentRead=True,
            )
            items = [item for page in pages for item in page["Items"]]
            # Each window on a partition of its own: `<user>#<scope>#<window>`.
            assert all(i["window_key"]["S"] == f"{user.user_id}#{i['counter']['S']}" for i in items)
            stored = {item["counter"]["S"]: int(item["spent"]["N"]) for item in items}
            assert {k: v for k, v in stored.items() if v} == {
                k: v for k, v in user.spent.items() if v
            }, (user.user_id, stored, user.spent)
            # Each counter is the sum of what its usage records count in it.
            counted: dict[str, int] = {}
            for rid, request in self.requests.items():
                if request.owner is not user or not request.counters:
                    continue
                record = plain(
                    client.get_item(
                        TableName=names["UsageTable"],
                        Key={"request_id": {"S": rid}},
                        ConsistentRead=True,
                    )["Item"]
                )
                amount = {"charged": "quota", "settled": "quota", "reserved": "hold_quota"}.get(
                    record["status"]
                )
                assert sorted(record.get("limit_counters") or []) == sorted(request.counters)
                for key in request.counters:
                    counted[key] = counted.get(key, 0) + (int(record[amount]) if amount else 0)
            assert {k: v for k, v in counted.items() if v} == {
                k: v for k, v in stored.items() if v
            }, (user.user_id, counted, stored)

    # ------------------------------------------------------------ referral

    def _transfer(self, user: MUser, quota: int, key: str, applied: bool) -> None:
        response = user.user.call(
            "POST", "/referral/transfer", json={"quota": quota}, headers={"Idempotency-Key": key}
        )
        if applied:
            assert response.status_code == 200, response.text  # a retry: nothing moves
            assert response.json() == self.replies[key]  # ... and its first result again
        elif quota < MIN_TRANSFER:
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == "transfer_below_minimum"
        elif quota > user.aff_quota:
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == "insufficient_aff_quota"
        else:
            assert response.status_code == 200, response.text
            user.quota += quota
            user.aff_quota -= quota
            applied = True
            self.replies[key] = response.json()
            assert response.json() == {"aff_quota": user.aff_quota, "quota": user.quota}
        self.transfers[key] = (user, quota, applied)
        tally(f"transfer: {response.status_code}")

    @precondition(lambda self: TRANSFERS)
    @rule(quota=st.one_of(st.integers(1, 3 * UNIT), st.just(MIN_TRANSFER)), data=st.data())
    def referral_transfer(self, quota: int, data: st.DataObject) -> None:
        """Move reward quota to the balance."""
        self._transfer(data.draw(st.sampled_from(self.users)), quota, uuid.uuid4().hex, False)

    @precondition(lambda self: TRANSFERS and any(u.aff_quota >= MIN_TRANSFER for u in self.users))
    @rule(data=st.data())
    def transfer_all_rewards(self, data: st.DataObject) -> None:
        """An inviter moves all its reward quota to its balance: a later refund of its
        invitee's order takes the rebate back from quota."""
        rich = [u for u in self.users if u.aff_quota >= MIN_TRANSFER]
        user = data.draw(st.sampled_from(rich))
        self._transfer(user, user.aff_quota, uuid.uuid4().hex, False)

    def _rewarded_and_refundable(self, order: MOrder) -> bool:
        return order.rebate > 0 and order.status == "paid" and self._refundable(order)

    @precondition(
        lambda self: TRANSFERS and any(self._rewarded_and_refundable(o) for o in self.orders)
    )
    @rule(data=st.data())
    def refund_after_the_inviter_transferred(self, data: st.DataObject) -> None:
        """The inviter moves all its reward quota to its balance, then its invitee's order is
        refunded (partly or wholly): the clawback aff_quota cannot cover comes from quota."""
        order = data.draw(st.sampled_from(self._orders(self._rewarded_and_refundable)))
        inviter = order.owner.inviter
        assert inviter is not None
        if inviter.aff_quota >= MIN_TRANSFER:
            self._transfer(inviter, inviter.aff_quota, uuid.uuid4().hex, False)
        minor = data.draw(self._refund_amounts(order))
        tally(f"refund after a transfer: {'all' if minor is None else 'partial'} ({order.method})")
        result, refund = self._send_refund(order, minor)
        self._delivered(order, REFUNDED, result, refund)

    @precondition(lambda self: TRANSFERS and bool(self.transfers))
    @rule(data=st.data())
    def referral_transfer_retried(self, data: st.DataObject) -> None:
        """A transfer sent again under its Idempotency-Key: it moves the quota once."""
        key = data.draw(st.sampled_from(sorted(self.transfers)))
        self._transfer(*self.transfers[key][:2], key, self.transfers[key][2])

    # ------------------------------------------------------------ invariants

    def _check_grants(
        self, user: MUser, account: dict[str, Any], entries: list[dict[str, Any]], now: float
    ) -> None:
        grants: dict[str, Any] = account.get("grants") or {}
        self._grants[user.user_id] = grants
        assert sum(g["r"] for g in grants.values()) == account["quota"], (user.user_id, grants)
        per_grant: dict[str, int] = {}
        for entry in entries:
            if entry["balance"] != "quota":
                assert not entry.get("grants"), entry
                continue
            moved = entry.get("grants") or {}
            assert sum(moved.values()) == entry["delta"], entry
            for grant_id, delta in moved.items():
                per_grant[grant_id] = per_grant.get(grant_id, 0) + delta
        for grant_id in set(per_grant) | set(grants):
            remaining = grants.get(grant_id, {}).get("r", 0)
            assert remaining == per_grant.get(grant_id, 0), (user.user_id, grant_id, grants)
        for grant_id, grant in grants.items():
            assert grant_id == "overdraft" or grant["r"] >= 0, (grant_id, grant)
            expired = grant.get("e") is not None and grant["e"] <= now - 60
            assert not (expired and grant["r"] > 0), ("expired, not written off", grant_id, grant)

    @invariant()
    def ledgers_balances_and_orders(self) -> None:
        ledgers: dict[str, list[dict[str, Any]]] = {}
        now = self.stack.billing_now().timestamp()
        for user in self.users:
            account = self.tables.account(user.user_id)
            assert account is not None
            entries = ledgers[user.user_id] = self.tables.ledger(user.user_id)
            sums = {"quota": 0, "aff_quota": 0}
            for entry in entries:
                sums[entry["balance"]] += entry["delta"]
                if entry["delta"] < 0 and entry["balance_after"] < 0:
                    settle = entry["entry_id"].removeprefix("usage#") in user.settled
                    allowed = entry["kind"] in ("reversal", "expiry")
                    assert allowed or (entry["kind"] == "usage" and settle), (
                        f"{entry['entry_id']} took {entry['balance']} below zero"
                    )
                if entry["balance"] == "aff_quota":
                    # Rebates (and the inviter's first-order bonus), clawbacks, transfers.
                    assert entry["kind"] in (
                        "referral_reward",
                        "signup_bonus",
                        "referral_transfer",
                        "reversal",
                    ), entry
            assert sums == {"quota": account["quota"], "aff_quota": account["aff_quota"]}, (
                user.user_id,
                sums,
                account,
            )
            self._check_grants(user, account, entries, now)
            assert (
                account["quota"],
                account["aff_quota"],
                account["aff_history_quota"],
                account["held_quota"],
                account["used_quota"],
                account["request_count"],
                account["paid_orders"],
            ) == (
                user.quota,
                user.aff_quota,
                user.aff_history,
                user.held,
                user.used,
                user.requests,
                user.paid_orders,
            ), (user.user_id, account)
        for order in self.orders:
            stored = self.tables.order(order.order_id)
            assert stored["status"] == order.status, (order.order_id, order.method, stored)
            assert bool(stored.get("paid_at")) == order.credited, stored
            refunded = Decimal(stored.get("refunded_money") or "0")
            assert refunded * 100 == order.refunded, (order.order_id, stored, order.refunded)
            entries = ledgers[order.owner.user_id]
            topups = [e for e in entries if e["kind"] == "topup" and e["ref"] == order.order_id]
            steps = [e for e in entries if e["entry_id"].startswith(f"reversal#{order.order_id}#")]
            assert [e["delta"] for e in topups] == ([order.quota] if order.credited else [])
            assert all(e["kind"] == "reversal" for e in steps), steps
            assert -sum(e["delta"] for e in steps) == order.reversed_quota, (order.order_id, steps)

    def teardown(self) -> None:
        for user in self.users:
            differences = check_stack_account(self.stack, user.user_id)
            assert not differences, [str(d) for d in differences]


def test_billing_state_machine(stack: LocalStack) -> None:
    BillingMachine.stack = stack
    run_state_machine_as_test(BillingMachine, settings=settings.get_profile(PROFILE))
