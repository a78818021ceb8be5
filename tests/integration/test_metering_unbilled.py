"""Unbilled usage (API.md, issue 13): a settle or charge that reports usage which cannot be
billed (`unknown_model`, `account_not_found`) is kept, whether it came through the Invoke API
or the usage queue; admins list it (`GET /admin/unbilled-usage`, newest first, paged) and
re-meter it (`POST /admin/unbilled-usage/{request_id}/remeter`), which bills it once however
many re-meters race. It is in no account's balance or history until it is billed.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.support.metering import (
    ADMIN,
    all_pages,
    assert_ledger_sums,
    create_account,
    funded_user,
    get_account,
    invoke,
    new_request,
    new_user,
    queue_depth,
    send,
    take_dead_letters,
    unbilled_item,
    usage_event,
    usage_record,
    wait_for_indexes,
)
from tests.support.stack import LocalStack, wait_for

LIST = "/admin/unbilled-usage"


def remeter_path(request_id: str) -> str:
    return f"/admin/unbilled-usage/{request_id}/remeter"


def listed(stack: LocalStack, limit: int = 100) -> list[dict[str, Any]]:
    """Every open item, following the cursors."""
    token = stack.token(ADMIN, admin=True)
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = f"?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        page = stack.request("GET", LIST + query, token=token)
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if not cursor:
            return items


def wait_listed(stack: LocalStack, request_ids: set[str]) -> list[dict[str, Any]]:
    """The open items once all of `request_ids` are listed (index reads may lag)."""
    found: list[list[dict[str, Any]]] = []

    def all_there() -> bool:
        found[:] = [listed(stack)]
        return request_ids <= {item["request_id"] for item in found[0]}

    wait_for(all_there, timeout=30, message=f"{len(request_ids)} unbilled items to be listed")
    return found[0]


def test_usage_of_an_account_not_made_yet_is_kept_and_remetered_once(stack: LocalStack) -> None:
    user = new_user()  # no account yet
    settle = usage_event(user, "settle", prompt_tokens=96)  # 120 quota
    result = invoke(stack, settle)
    assert (result["status"], result["error"], result["unbilled"]) == (
        "rejected", "account_not_found", True,
    )  # fmt: skip
    (item,) = [i for i in wait_listed(stack, {settle["request_id"]}) if i["user_id"] == user]
    assert (item["action"], item["model"], item["prompt_tokens"], item["status"]) == (
        "settle", "gpt-4o", 96, "unbilled",
    )  # fmt: skip
    assert item["error"] == "account_not_found" and item["result"] is None
    # Still no account: the re-meter is refused, nothing is billed, the item stays open.
    admin = stack.token(ADMIN, admin=True)
    refused = stack.request("POST", remeter_path(settle["request_id"]), token=admin)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "remeter_failed"
    assert usage_record(stack, settle["request_id"]) is None
    assert unbilled_item(stack, settle["request_id"])["attempts"] == "1"  # type: ignore[index]

    create_account(stack, user)
    wait_for_indexes(stack)
    assert all_pages(stack, user, "/usage") == []  # not in the user's history yet
    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(
            pool.map(
                lambda _: stack.request("POST", remeter_path(settle["request_id"]), token=admin),
                range(10),
            )
        )
    assert [r.status_code for r in responses] == [200] * 10, [r.text for r in responses]
    bodies = [r.json() for r in responses]
    assert {b["status"] for b in bodies} == {"remetered"}
    # One charge: the settle's price, below zero as a settle may.
    assert {
        (b["result"]["status"], b["result"]["quota"], b["result"]["balance"]) for b in bodies
    } == {("settled", 120, -120)}
    account = assert_ledger_sums(stack, user)
    assert (account["quota"], account["used_quota"], account["request_count"]) == (-120, 120, 1)
    wait_for_indexes(stack)
    assert [u["status"] for u in all_pages(stack, user, "/usage")] == ["settled"]
    # The event itself delivered late is a duplicate now, and the item is no longer open.
    assert invoke(stack, settle)["status"] == "duplicate"
    assert get_account(stack, user)["quota"] == -120
    wait_for(
        lambda: settle["request_id"] not in {i["request_id"] for i in listed(stack)},
        timeout=30,
        message="the remetered item to leave the list",
    )


def test_unbillable_usage_from_the_queue_is_kept_not_dead_lettered(stack: LocalStack) -> None:
    user = funded_user(stack, 1000)
    settle = usage_event(user, "settle", model="gpt-9-unpriced")
    charge = usage_event(user, model="gpt-9-unpriced")
    reserve = usage_event(user, "reserve", model="gpt-9-unpriced")  # no usage yet: refused
    send(stack, [settle, {"events": [charge, reserve]}])
    wait_for(
        lambda: (
            unbilled_item(stack, settle["request_id"]) is not None
            and unbilled_item(stack, charge["request_id"]) is not None
            and queue_depth(stack, "UsageQueue") == 0
        ),
        timeout=60,
        message="the unbillable usage to be kept",
    )
    assert unbilled_item(stack, reserve["request_id"]) is None
    assert take_dead_letters(stack, user) == []
    assert get_account(stack, user)["quota"] == 1000
    items = wait_listed(stack, {settle["request_id"], charge["request_id"]})
    mine = {i["request_id"]: i for i in items if i["user_id"] == user}
    assert {i["error"] for i in mine.values()} == {"unknown_model"}
    # Still no price: re-metering refuses and bills nothing.
    refused = stack.request(
        "POST", remeter_path(charge["request_id"]), token=stack.token(ADMIN, admin=True)
    )
    assert refused.status_code == 409 and "unknown_model" in refused.json()["error"]["message"]
    assert get_account(stack, user)["quota"] == 1000


def test_the_list_is_newest_first_and_pages_with_its_cursor(stack: LocalStack) -> None:
    user = new_user()  # no account: every settle is kept
    request_ids = []
    for tokens in range(1, 8):
        event = usage_event(user, "settle", prompt_tokens=tokens)
        assert invoke(stack, event)["unbilled"] is True
        request_ids.append(event["request_id"])
    wait_listed(stack, set(request_ids))
    paged = listed(stack, limit=2)
    ids = [item["request_id"] for item in paged]
    assert len(ids) == len(set(ids)), "an item came twice"
    assert [i for i in ids if i in request_ids] == request_ids[::-1]
    times = [item["created_at"] for item in paged]
    assert times == sorted(times, reverse=True)


@pytest.mark.parametrize(
    "query",
    ["?limit=0", "?limit=101", "?limit=abc", "?cursor=not-a-cursor", "?cursor=eyJhIjoxfQ"],
)
def test_bad_list_queries_are_400(stack: LocalStack, query: str) -> None:
    response = stack.request("GET", LIST + query, token=stack.token(ADMIN, admin=True))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"


def test_non_admins_and_unknown_requests_are_refused_and_nothing_is_written(
    stack: LocalStack,
) -> None:
    user = new_user()
    settle = usage_event(user, "settle")
    invoke(stack, settle)
    before = unbilled_item(stack, settle["request_id"])
    assert before is not None
    member = stack.token(user)
    assert stack.request("GET", LIST, token=member).status_code == 403
    forbidden = stack.request("POST", remeter_path(settle["request_id"]), token=member)
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"
    assert stack.request("GET", LIST).status_code == 401
    unknown = stack.request(
        "POST", remeter_path(new_request()), token=stack.token(ADMIN, admin=True)
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert unbilled_item(stack, settle["request_id"]) == before
    assert usage_record(stack, settle["request_id"]) is None


def test_kept_usage_keeps_its_key_id_and_is_remetered_against_the_key_limit(
    stack: LocalStack,
) -> None:
    user = new_user()  # no account yet: the keyed settle is kept
    key = f"key-{new_request()[4:16]}"
    settle = usage_event(user, "settle", prompt_tokens=96, key_id=key)  # 120 quota
    assert invoke(stack, settle)["unbilled"] is True
    assert unbilled_item(stack, settle["request_id"])["key_id"] == key  # type: ignore[index]
    (item,) = [i for i in wait_listed(stack, {settle["request_id"]}) if i["user_id"] == user]
    assert item["key_id"] == key

    create_account(stack, user)
    admin = stack.token(ADMIN, admin=True)
    adjusted = stack.request(
        "POST",
        f"/admin/accounts/{user}/adjust",
        token=admin,
        json={"delta": 1000, "reason": "unbilled key test"},
    )
    assert adjusted.status_code == 200, adjusted.text
    token = stack.token(user)
    limit = stack.request(
        "PUT", f"/limits/key:{key}", token=token, json={"max_quota": 200, "period": "day"}
    )
    assert limit.status_code == 200, limit.text
    charge = usage_event(user, key_id=key)  # 100 quota: fits (0 + 100 <= 200)
    assert invoke(stack, charge)["status"] == "charged"

    remetered = stack.request("POST", remeter_path(settle["request_id"]), token=admin)
    assert remetered.status_code == 200, remetered.text
    assert (remetered.json()["key_id"], remetered.json()["result"]["status"]) == (key, "settled")
    # The re-meter counted in the key's window (a settle may take it above its limit) ...
    limits = stack.request("GET", "/limits", token=token).json()["limits"]
    assert [(lim["scope"], lim["spent"]) for lim in limits] == [(f"key:{key}", 220)]
    assert usage_record(stack, settle["request_id"])["key_id"] == key  # type: ignore[index]
    # ... so the key's next charge is over its limit, while the account's other usage is not.
    over = invoke(stack, usage_event(user, key_id=key))
    assert (over["status"], over["error"]) == ("rejected", "limit_exceeded")
    assert invoke(stack, usage_event(user))["status"] == "charged"
    account = assert_ledger_sums(stack, user)
    assert account["quota"] == 1000 - 100 - 120 - 100
    # The re-metered usage is listed under its key.
    wait_for_indexes(stack)
    by_key = stack.request("GET", f"/usage?key_id={key}&limit=100", token=token)
    assert by_key.status_code == 200, by_key.text
    assert {u["request_id"] for u in by_key.json()["items"]} == {
        charge["request_id"], settle["request_id"],
    }  # fmt: skip
