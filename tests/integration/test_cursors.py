"""Strict query input on every list over HTTP: `?limit=` is ASCII digits from 1 to 100 and
`?cursor=` only one the server issued for that list and that caller (API.md, Conventions).
Anything else is 400 invalid_request, never a 500, and the refusal carries no items."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest

from tests.support.payments import checkout
from tests.support.stack import LocalStack, wait_for


@dataclass(frozen=True)
class Listing:
    """A list route whose caller has more than one page of it."""

    name: str
    path: str
    user: str
    token: str
    other_token: str  # another caller of the same route, with a list of its own
    first: dict[str, Any]  # the caller's first page at limit=1

    @property
    def cursor(self) -> str:
        cursor = self.first["next_cursor"]
        assert isinstance(cursor, str) and cursor
        return cursor


def _account(stack: LocalStack, prefix: str) -> tuple[str, str]:
    user = f"{prefix}-{uuid.uuid4().hex[:12]}"
    token = stack.token(user)
    assert stack.request("POST", "/account", token=token, json={}).status_code == 201
    return user, token


def _adjust(stack: LocalStack, user: str, delta: int) -> None:
    admin = stack.token(f"admin-cursors-{uuid.uuid4().hex[:6]}", admin=True)
    response = stack.request(
        "POST", f"/admin/accounts/{user}/adjust", token=admin, json={"delta": delta, "reason": "t"}
    )
    assert response.status_code == 200, response.text


def _charge(stack: LocalStack, user: str) -> None:
    result = stack.invoke(
        "MeterUsageFunction",
        {
            "action": "charge",
            "request_id": f"req-{uuid.uuid4().hex}",
            "user_id": user,
            "model": "gpt-4o",
            "prompt_tokens": 10,
            "completion_tokens": 0,
        },
    )
    assert result["status"] == "charged", result


def _first_page(stack: LocalStack, path: str, token: str) -> dict[str, Any]:
    """The first page at limit=1, once the list's index shows two items (lists read
    eventually consistent indexes: what was just written appears within moments)."""

    def two_pages() -> dict[str, Any] | None:
        response = stack.request("GET", f"{path}?limit=1", token=token)
        assert response.status_code == 200, response.text
        page: dict[str, Any] = response.json()
        return page if len(page["items"]) == 1 and page["next_cursor"] else None

    page: dict[str, Any] = wait_for(two_pages, message=f"two pages of {path}")
    return page


def _make_codes(stack: LocalStack, token: str) -> None:
    for _ in range(2):
        created = stack.request(
            "POST",
            "/admin/redemption-codes",
            token=token,
            json={"name": "cursor test", "quota": 1, "count": 1},
        )
        assert created.status_code == 201, created.text


def _fill(stack: LocalStack, name: str, user: str, token: str) -> None:
    """Two pages (at limit=1) of `name` for this user."""
    _adjust(stack, user, 10_000)  # ledger entries, and quota for the usage
    _adjust(stack, user, 10_000)
    if name == "usage":
        _charge(stack, user)
        _charge(stack, user)
    if name == "topups":
        checkout(stack, token, amount=1)
        checkout(stack, token, amount=2)


PATHS = {
    "ledger": "/ledger",
    "usage": "/usage",
    "topups": "/topups",
    "redemption_codes": "/admin/redemption-codes",
}


@pytest.fixture(scope="module", params=list(PATHS))
def listing(request: pytest.FixtureRequest, stack: LocalStack) -> Listing:
    name: str = request.param
    if name == "redemption_codes":  # one list for all admins; each admin has its own cursors
        user = f"admin-{uuid.uuid4().hex[:8]}"
        token = stack.token(user, admin=True)
        other_token = stack.token(f"admin-{uuid.uuid4().hex[:8]}", admin=True)
        _make_codes(stack, token)
    else:
        user, token = _account(stack, f"cursor-{name}")
        other, other_token = _account(stack, f"cursor-{name}-other")
        _fill(stack, name, user, token)
        _fill(stack, name, other, other_token)
    path = PATHS[name]
    return Listing(name, path, user, token, other_token, _first_page(stack, path, token))


def _get(stack: LocalStack, listing: Listing, query: str, token: str | None = None) -> Any:
    return stack.request("GET", f"{listing.path}?{query}", token=token or listing.token)


def _assert_refused(response: Any, what: str) -> None:
    assert response.status_code == 400, (what, response.status_code, response.text)
    body = response.json()
    assert body["error"]["code"] == "invalid_request", (what, body)
    assert set(body) == {"error"}, (what, body)  # no items, no cursor: nothing leaks


def test_the_issued_cursor_pages_on(stack: LocalStack, listing: Listing) -> None:
    second = _get(stack, listing, f"limit=1&cursor={quote(listing.cursor)}")
    assert second.status_code == 200, second.text
    page = second.json()
    assert len(page["items"]) == 1 and page["items"] != listing.first["items"]
    # cursors stay opaque: nothing in them reads as the key they stand for
    assert "user_id" not in listing.cursor and "{" not in listing.cursor


# "\uff11\uff10" is a fullwidth "10": str.isdigit() accepts it and int() reads it as 10.
@pytest.mark.parametrize(
    "limit",
    ["²", "٣", "①", "\uff11\uff10", "0", "101", "-1", "+5", "1.5", "1e2", "abc", "", " 5", "0x10"],
)
def test_limits_that_are_not_ascii_digits_in_range_are_400(
    stack: LocalStack, listing: Listing, limit: str
) -> None:
    _assert_refused(_get(stack, listing, f"limit={quote(limit)}"), f"limit={limit!r}")


def test_limits_at_the_bounds_are_served(stack: LocalStack, listing: Listing) -> None:
    for limit in ("1", "100", "007"):
        response = _get(stack, listing, f"limit={limit}")
        assert response.status_code == 200, (limit, response.text)
        assert 1 <= len(response.json()["items"]) <= int(limit)


def _b64(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def test_forged_and_truncated_cursors_are_400(stack: LocalStack, listing: Listing) -> None:
    cursor = listing.cursor
    inner, _, mac = cursor.rpartition(".")
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    forged = {
        "truncated by one": cursor[:-1],
        "truncated by half": cursor[: len(cursor) // 2],
        "the key without its seal": inner,
        "the seal alone": mac,
        "a flipped seal": f"{inner}.{flipped}",
        "an empty seal": f"{inner}.",
        "another key under the seal": f"{_b64({'user_id': {'S': 'someone-else'}})}.{mac}",
        "a key made up": _b64({"user_id": {"S": "x"}, "seq": {"S": "1"}}),
        "random text": "not-a-cursor",
        "non-ASCII": "cursor²",
        "too long": "A" * 3000,
    }
    for what, value in forged.items():
        _assert_refused(_get(stack, listing, f"cursor={quote(value)}"), what)


def test_another_callers_cursor_is_400(stack: LocalStack, listing: Listing) -> None:
    response = _get(stack, listing, f"cursor={quote(listing.cursor)}", token=listing.other_token)
    _assert_refused(response, "another caller's cursor")
    # ... while that caller pages through its own list as usual
    own = _first_page(stack, listing.path, listing.other_token)
    if listing.name != "redemption_codes":
        assert own["items"] != listing.first["items"]
    second = _get(
        stack, listing, f"limit=1&cursor={quote(own['next_cursor'])}", listing.other_token
    )
    assert second.status_code == 200, second.text


def test_a_cursor_of_another_list_is_400(stack: LocalStack, listing: Listing) -> None:
    """The same caller (an admin too, so every list is open to it) on every other list."""
    token = stack.token(listing.user, admin=True)
    for name, path in PATHS.items():
        if name != listing.name:
            response = stack.request("GET", f"{path}?cursor={quote(listing.cursor)}", token=token)
            _assert_refused(response, f"a {listing.name} cursor on {path}")
