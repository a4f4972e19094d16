"""/v1/subscriptions and /v1/invoices: the BrinkByte month end over HTTP — prorated changes, the
invoice lifecycle, paying from the wallet, the printable page; who may do what; bad input on
every route; and another tenant's objects answering 404."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from meterline.billing import tasks
from meterline.clock import FrozenClock
from meterline.db.engine import Database
from tests.api.conftest import ApiTenant, assert_problem
from tests.factories import make_key, make_licensing_catalogue

NS = 1_000_000_000
BILLING = ["billing:read", "billing:write"]
WALLET = "/v1/wallets/licensee/tenant-123/USD"


def at(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp()) * NS  # type: ignore[misc]


NOV_1 = at(2025, 11, 1)


def create_bb(db: Database, clock: FrozenClock, tenant_id: str) -> ApiTenant:
    """The BrinkByte catalogue and tenant-123's license; keys: admin, an operator with the billing
    scopes (writer), and a customer key with no billing scope (reader)."""
    with db.session() as s:
        make_licensing_catalogue(s, tenant_id, clock)
        admin = make_key(s, tenant_id, clock, kind="admin").secret
        writer = make_key(s, tenant_id, clock, kind="operator", scopes=[*BILLING, "ledger:read", "ledger:write"]).secret
        reader = make_key(s, tenant_id, clock, kind="customer").secret
    return ApiTenant(tenant_id, admin, writer, reader)


@pytest.fixture
def bb(db: Database, clock: FrozenClock, tenant_id: str) -> ApiTenant:
    clock.set(NOV_1)
    return create_bb(db, clock, tenant_id)


@pytest.fixture
def other(db: Database, clock: FrozenClock, tenant_id: str, bb: ApiTenant) -> ApiTenant:
    return create_bb(db, clock, f"{tenant_id}-b")


SUBSCRIPTION = {"customer_id": "tenant-123",
                "items": [{"plan_id": "base_license"}, {"pack_id": "advanced_analytics"}]}


def subscribe(client, t: ApiTenant, body=None) -> dict:  # type: ignore[no-untyped-def]
    r = client.post("/v1/subscriptions", json=body or SUBSCRIPTION, headers=t.w)
    assert r.status_code == 201, r.text
    return dict(r.json())


def invoice(client, t: ApiTenant, sid: str, finalize: bool = True) -> dict:  # type: ignore[no-untyped-def]
    r = client.post(f"/v1/subscriptions/{sid}/invoices", headers=t.w)
    assert r.status_code == 201, r.text
    if finalize:
        r = client.post(f"/v1/invoices/{r.json()['id']}/finalize", headers=t.w)
        assert r.status_code == 200, r.text
    return dict(r.json())


# -- the month end, end to end -----------------------------------------------------------------
def test_a_month_of_billing_over_http(client, bb, clock):
    sub = subscribe(client, bb)
    assert {k: sub[k] for k in ("customer_type", "customer_id", "currency", "status", "cancel_at_period_end",
                                "billing_anchor", "current_period_start", "current_period_end")} == {
        "customer_type": "licensee", "customer_id": "tenant-123", "currency": "USD", "status": "active",
        "cancel_at_period_end": False, "billing_anchor": "2025-11-01T00:00:00.000000Z",
        "current_period_start": "2025-11-01T00:00:00.000000Z", "current_period_end": "2025-12-01T00:00:00.000000Z"}
    base, analytics = sub["items"]
    assert (analytics["pack_id"], analytics["unit_price"], analytics["quantity"]) == ("advanced_analytics", "20.00", 100)
    assert {k: base[k] for k in ("plan_id", "name", "basis", "unit_price", "unit_price_minor", "quantity",
                                 "period_quantity", "status")} == {
        "plan_id": "base_license", "name": "Base License", "basis": "camera", "unit_price": "60.00",
        "unit_price_minor": 6000, "quantity": 100, "period_quantity": 100, "status": "active"}
    sid = sub["id"]
    assert client.get(f"/v1/subscriptions/{sid}", headers=bb.w).json() == sub

    # 20 Nov 08:00: 20 more cameras, and the intelligence pack.
    clock.set(at(2025, 11, 20, 8))
    r = client.patch(f"/v1/subscriptions/{sid}/items/{base['id']}", json={"quantity": 120}, headers=bb.w)
    assert r.status_code == 200, r.text
    assert [(p["description"], p["amount"], p["amount_minor"]) for p in r.json()["prorations"]] == [
        ("Unused time on 100 × Base License after 2025-11-20 08:00:00 UTC", "-2133.33", -213_333),
        ("Remaining time on 120 × Base License after 2025-11-20 08:00:00 UTC", "2560.00", 256_000)]
    assert (r.json()["item"]["quantity"], r.json()["item"]["period_quantity"]) == (120, 100)
    r = client.post(f"/v1/subscriptions/{sid}/items", json={"pack_id": "intelligence"}, headers=bb.w)
    assert r.status_code == 201, r.text
    assert [p["amount"] for p in r.json()["prorations"]] == ["142.22"]

    upcoming = client.get(f"/v1/subscriptions/{sid}/upcoming-invoice", headers=bb.w).json()
    assert (upcoming["id"], upcoming["status"], upcoming["total"], upcoming["total_minor"]) == (
        None, "upcoming", "8568.89", 856_889)

    draft = client.post(f"/v1/subscriptions/{sid}/invoices", headers=bb.w)
    assert draft.status_code == 201, draft.text
    d = draft.json()
    assert (d["status"], d["number"], d["total"], d["amount_due"]) == ("draft", None, "8568.89", "8568.89")
    assert [ln["kind"] for ln in d["lines"]] == ["proration"] * 3 + ["subscription"] * 2
    assert d["lines"][:3] == upcoming["lines"][:3]  # the very pending lines the preview showed
    assert [ln["amount"] for ln in d["lines"]] == [ln["amount"] for ln in upcoming["lines"]]
    again = assert_problem(client.post(f"/v1/subscriptions/{sid}/invoices", headers=bb.w), 409, "invoice_exists")
    assert again["invoice_id"] == d["id"]

    inv = client.post(f"/v1/invoices/{d['id']}/finalize", headers=bb.w).json()
    assert (inv["status"], inv["number"]) == ("open", "INV-000001")
    refused = assert_problem(client.post(f"/v1/invoices/{d['id']}/pay", headers=bb.w), 402, "insufficient_funds")
    assert (refused["amount_due"], refused["available"], refused["invoice_id"]) == ("8568.89", "0.00", d["id"])
    kept = client.get(f"/v1/invoices/{d['id']}", headers=bb.w).json()
    assert (kept["status"], kept["payment_attempts"]) == ("open", 1)
    assert kept["last_payment_error"] == ("the USD wallet of licensee tenant-123 has 0.00 available; "
                                          "the invoice is due 8568.89")
    r = client.post(f"{WALLET}/deposits", json={"amount": "10000.00", "proof": "wire-1"}, headers=bb.w)
    assert r.status_code == 201, r.text
    paid = client.post(f"/v1/invoices/{d['id']}/pay", headers=bb.w)
    assert paid.status_code == 200, paid.text
    p = paid.json()
    assert (p["status"], p["amount_paid"], p["amount_due"], p["payment_transfer_id"]) == (
        "paid", "8568.89", "0.00", f"inv:{d['id']}:payment")
    assert client.get(WALLET, headers=bb.w).json()["available"] == "1431.11"
    assert_problem(client.post(f"/v1/invoices/{d['id']}/pay", headers=bb.w), 409, "invalid_invoice_state")
    assert_problem(client.post(f"/v1/invoices/{d['id']}/void", headers=bb.w), 409, "invalid_invoice_state")

    page = client.get(f"/v1/invoices/{d['id']}.html", headers=bb.w)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "INV-000001" in page.text and "8,568.89 USD" in page.text and "−2,133.33" in page.text
    assert "@media print" in page.text and "<script" not in page.text

    # December: the period after the invoiced one, at the new quantities.
    nxt = client.get(f"/v1/subscriptions/{sid}/upcoming-invoice", headers=bb.w).json()
    assert (nxt["period_start"], nxt["total"]) == ("2025-12-01T00:00:00.000000Z", "9600.00")


def test_a_license_change_moves_its_subscription_with_proration(client, bb, clock):
    """PATCH /v1/licenses: more cameras and a new pack bill from that second, like item changes."""
    sid = subscribe(client, bb, {"customer_id": "tenant-123", "items": [
        {"plan_id": "base_license"}, {"pack_id": "advanced_analytics"},
        {"name": "Support", "basis": "tenant", "unit_price": "50.00"}]})["id"]
    clock.set(at(2025, 11, 20, 8))  # 921,600 of November's 2,592,000 seconds remain
    r = client.patch("/v1/licenses/tenant-123", headers=bb.a,
                     json={"cameras_allowed": 120, "growth_packs": ["advanced_analytics", "intelligence"]})
    assert r.status_code == 200, r.text
    items = {i["name"]: i for i in client.get(f"/v1/subscriptions/{sid}", headers=bb.w).json()["items"]}
    assert {n: i["quantity"] for n, i in items.items()} == {
        "Base License": 120, "Advanced Analytics Pack": 120, "Support": 1, "Intelligence Pack": 1}
    upcoming = client.get(f"/v1/subscriptions/{sid}/upcoming-invoice", headers=bb.w).json()
    assert sorted(ln["amount_minor"] for ln in upcoming["lines"] if ln["kind"] == "proration") == [
        -213_333, -71_111, 14_222, 85_333, 256_000]
    # 6,000 + 2,000 + 50 for the month, plus the prorations above.
    assert upcoming["total_minor"] == 805_000 - 213_333 + 256_000 - 71_111 + 85_333 + 14_222

    # A change that bills nothing (suspension) writes nothing; dropping the pack credits it.
    clock.set(at(2025, 11, 25))
    assert client.patch("/v1/licenses/tenant-123", headers=bb.a, json={"status": "suspended"}).status_code == 200
    assert client.get(f"/v1/subscriptions/{sid}/upcoming-invoice", headers=bb.w).json()["total_minor"] == \
        upcoming["total_minor"]
    r = client.patch("/v1/licenses/tenant-123", headers=bb.a, json={"growth_packs": ["advanced_analytics"]})
    assert r.status_code == 200, r.text
    names = [i["name"] for i in client.get(f"/v1/subscriptions/{sid}", headers=bb.w).json()["items"]]
    assert "Intelligence Pack" not in names and "Support" in names
    later = client.get(f"/v1/subscriptions/{sid}/upcoming-invoice", headers=bb.w).json()
    assert later["total_minor"] == upcoming["total_minor"] - 8_000  # 6 of 30 days of $400, credited


def test_the_worker_closes_the_period_and_the_list_shows_it(client, bb, db, clock):
    sid = subscribe(client, bb)["id"]
    client.post(f"{WALLET}/deposits", json={"amount": "8000", "proof": "wire-2"}, headers=bb.w)
    clock.set(at(2025, 12, 1))
    tasks.close_periods(db, clock, limit=1000)
    [inv] = client.get("/v1/invoices", params={"subscription_id": sid}, headers=bb.w).json()["data"]
    assert (inv["status"], inv["number"], inv["total"], len(inv["lines"])) == ("paid", "INV-000001", "8000.00", 2)
    assert client.get(f"/v1/subscriptions/{sid}", headers=bb.w).json()["current_period_start"] == (
        "2025-12-01T00:00:00.000000Z")


def test_lists_filter_and_page(client, bb):
    ids = [subscribe(client, bb)["id"] for _ in range(3)]
    other = subscribe(client, bb, {"customer_id": "acme", "items": [
        {"name": "Support", "basis": "tenant", "unit_price": "99.5"}]})["id"]
    page = client.get("/v1/subscriptions", params={"limit": 2}, headers=bb.w).json()
    rest = client.get("/v1/subscriptions", params={"cursor": page["next_cursor"]}, headers=bb.w).json()
    assert [s["id"] for s in page["data"] + rest["data"]] == sorted([*ids, other]) and rest["next_cursor"] is None
    acme = client.get("/v1/subscriptions", params={"customer_id": "acme"}, headers=bb.w).json()["data"]
    assert [s["id"] for s in acme] == [other] and acme[0]["items"][0]["unit_price"] == "99.50"
    drafts = [invoice(client, bb, sid, finalize=False)["id"] for sid in ids]
    client.post(f"/v1/invoices/{drafts[0]}/finalize", headers=bb.w)
    assert [i["id"] for i in client.get("/v1/invoices", params={"status": "draft"}, headers=bb.w).json()["data"]] \
        == sorted(drafts[1:])
    first = client.get("/v1/invoices", params={"limit": 1}, headers=bb.w).json()
    assert len(first["data"]) == 1 and first["next_cursor"]
    assert client.get("/v1/invoices", params={"customer_id": "acme"}, headers=bb.w).json()["data"] == []


def test_void_a_draft_and_an_open_invoice(client, bb):
    a, b = subscribe(client, bb)["id"], subscribe(client, bb)["id"]
    draft = invoice(client, bb, a, finalize=False)
    opened = invoice(client, bb, b)
    for inv in (draft, opened):
        r = client.post(f"/v1/invoices/{inv['id']}/void", headers=bb.w)
        assert r.status_code == 200 and r.json()["status"] == "void" and r.json()["voided_at"], r.text
    assert_problem(client.post(f"/v1/invoices/{draft['id']}/finalize", headers=bb.w), 409, "invalid_invoice_state")
    assert_problem(client.post(f"/v1/invoices/{opened['id']}/pay", headers=bb.w), 409, "invalid_invoice_state")
    assert "nothing is owed" in client.get(f"/v1/invoices/{opened['id']}.html", headers=bb.w).text


def test_remove_an_item_and_cancel(client, bb, clock):
    sub = subscribe(client, bb)
    sid, analytics = sub["id"], sub["items"][1]["id"]
    clock.set(at(2025, 11, 16))
    r = client.delete(f"/v1/subscriptions/{sid}/items/{analytics}", headers=bb.w)
    assert r.status_code == 200, r.text
    assert [p["amount"] for p in r.json()["prorations"]] == ["-1000.00"]
    assert [i["plan_id"] for i in r.json()["subscription"]["items"]] == ["base_license"]
    assert_problem(client.delete(f"/v1/subscriptions/{sid}/items/{analytics}", headers=bb.w),
                   404, "subscription_item_not_found")
    r = client.post(f"/v1/subscriptions/{sid}/cancel", headers=bb.w)
    assert r.status_code == 200 and r.json()["cancel_at_period_end"] is True, r.text


def test_a_credit_left_when_a_canceled_subscription_ends_comes_back_to_the_wallet(client, bb, db, clock):
    """November paid early, Advanced Analytics removed half way (−1000.00), canceled: the last
    invoice refunds the credit to the wallet instead of carrying it to an invoice never made."""
    sub = subscribe(client, bb)
    sid, analytics = sub["id"], sub["items"][1]["id"]
    client.post(f"{WALLET}/deposits", json={"amount": "8000", "proof": "wire-3"}, headers=bb.w)
    paid = client.post(f"/v1/invoices/{invoice(client, bb, sid)['id']}/pay", headers=bb.w)
    assert paid.json()["status"] == "paid", paid.text
    clock.set(at(2025, 11, 16))
    assert client.delete(f"/v1/subscriptions/{sid}/items/{analytics}", headers=bb.w).status_code == 200
    assert client.post(f"/v1/subscriptions/{sid}/cancel", headers=bb.w).status_code == 200
    upcoming = client.get(f"/v1/subscriptions/{sid}/upcoming-invoice", headers=bb.w).json()
    assert [(ln["kind"], ln["amount"]) for ln in upcoming["lines"]] == [("proration", "-1000.00"),
                                                                        ("balance", "1000.00")]
    clock.set(at(2025, 12, 1))
    tasks.close_periods(db, clock, limit=1000)
    rows = client.get("/v1/invoices", params={"subscription_id": sid}, headers=bb.w).json()["data"]
    final = next(i for i in rows if i["period_start"] == i["period_end"])
    assert (final["status"], final["total"]) == ("paid", "0.00")
    assert [(ln["kind"], ln["amount"], ln["description"]) for ln in final["lines"]] == [
        ("proration", "-1000.00", "Unused time on 100 × Advanced Analytics Pack after 2025-11-16 00:00:00 UTC"),
        ("balance", "1000.00", f"Credit refunded to the wallet (transfer sub:{sid}:credit_refund)")]
    assert client.get(WALLET, headers=bb.w).json()["available"] == "1000.00"
    [refund] = [t for t in client.get(f"{WALLET}/transactions", headers=bb.w).json()["data"]
                if t["transfer_id"] == f"sub:{sid}:credit_refund"]
    assert (refund["amount"], refund["code"], refund["reference"]) == ("1000.00", "invoice_credit_refund", sid)
    assert client.get(f"/v1/subscriptions/{sid}", headers=bb.w).json()["status"] == "canceled"
    assert_problem(client.get(f"/v1/subscriptions/{sid}/upcoming-invoice", headers=bb.w), 409,
                   "subscription_canceled")


@pytest.mark.parametrize("december", ["open", "void"])
def test_a_credit_for_a_period_not_paid_is_never_refunded(client, bb, db, clock, december):
    """November paid; December invoiced early and left open (or voided); Advanced Analytics
    removed on 16 Dec (−1032.26); canceled. The credit pays part of the open December — or, for
    a voided December, is worth nothing — and no cash goes back to the wallet."""
    sub = subscribe(client, bb)
    sid, analytics = sub["id"], sub["items"][1]["id"]
    client.post(f"{WALLET}/deposits", json={"amount": "8000", "proof": "wire-4"}, headers=bb.w)
    paid = client.post(f"/v1/invoices/{invoice(client, bb, sid)['id']}/pay", headers=bb.w)
    assert paid.json()["status"] == "paid", paid.text
    clock.set(at(2025, 12, 1))
    tasks.close_periods(db, clock, limit=1000)
    dec = invoice(client, bb, sid)
    assert (dec["number"], dec["status"], dec["amount_due"]) == ("INV-000002", "open", "8000.00")
    if december == "void":
        assert client.post(f"/v1/invoices/{dec['id']}/void", headers=bb.w).status_code == 200
    clock.set(at(2025, 12, 16))
    assert client.delete(f"/v1/subscriptions/{sid}/items/{analytics}", headers=bb.w).status_code == 200
    assert client.post(f"/v1/subscriptions/{sid}/cancel", headers=bb.w).status_code == 200
    upcoming = client.get(f"/v1/subscriptions/{sid}/upcoming-invoice", headers=bb.w).json()
    clock.set(at(2026, 1, 1))
    tasks.close_periods(db, clock, limit=1000)
    rows = client.get("/v1/invoices", params={"subscription_id": sid}, headers=bb.w).json()["data"]
    final = next(i for i in rows if i["period_start"] == i["period_end"])
    settled = {"open": "Credit applied to invoice INV-000002 (still open)",
               "void": "Credit not refunded: it offsets charges that were never paid"}[december]
    assert [(ln["kind"], ln["amount"], ln["description"]) for ln in final["lines"]] == [
        ("proration", "-1032.26", "Unused time on 100 × Advanced Analytics Pack after 2025-12-16 00:00:00 UTC"),
        ("balance", "1032.26", settled)]
    assert [(ln["kind"], ln["amount"]) for ln in upcoming["lines"]] == [
        (ln["kind"], ln["amount"]) for ln in final["lines"]]
    assert (final["status"], final["total"]) == ("paid", "0.00")
    assert client.get(WALLET, headers=bb.w).json()["available"] == "0.00"
    assert not [t for t in client.get(f"{WALLET}/transactions", headers=bb.w).json()["data"]
                if t["transfer_id"] == f"sub:{sid}:credit_refund"]
    after = client.get(f"/v1/invoices/{dec['id']}", headers=bb.w).json()
    assert (after["status"], after["amount_paid"], after["amount_due"]) == (
        ("open", "1032.26", "6967.74") if december == "open" else ("void", "0.00", "8000.00"))
    assert client.get(f"/v1/subscriptions/{sid}", headers=bb.w).json()["status"] == "canceled"


def test_idempotency_keys_replay_and_conflict(client, bb):
    h = {**bb.w, "Idempotency-Key": "sub-1"}
    first = client.post("/v1/subscriptions", json=SUBSCRIPTION, headers=h)
    again = client.post("/v1/subscriptions", json=SUBSCRIPTION, headers=h)
    assert first.status_code == again.status_code == 201 and first.json() == again.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(client.get("/v1/subscriptions", headers=bb.w).json()["data"]) == 1
    other = {**SUBSCRIPTION, "customer_id": "acme"}
    assert_problem(client.post("/v1/subscriptions", json=other, headers=h), 409, "idempotency_conflict")
    inv = invoice(client, bb, first.json()["id"])
    client.post(f"{WALLET}/deposits", json={"amount": "8000", "proof": "wire-3"}, headers=bb.w)
    pay = {**bb.w, "Idempotency-Key": "pay-1"}
    r1 = client.post(f"/v1/invoices/{inv['id']}/pay", headers=pay)
    r2 = client.post(f"/v1/invoices/{inv['id']}/pay", headers=pay)
    assert r1.status_code == r2.status_code == 200 and r2.headers["Idempotent-Replayed"] == "true"
    assert client.get(WALLET, headers=bb.w).json()["available"] == "0.00"  # paid once


def test_a_refused_payment_is_not_replayed(client, bb):
    inv = invoice(client, bb, subscribe(client, bb)["id"])
    pay = {**bb.w, "Idempotency-Key": "pay-2"}
    assert_problem(client.post(f"/v1/invoices/{inv['id']}/pay", headers=pay), 402, "insufficient_funds")
    client.post(f"{WALLET}/deposits", json={"amount": "8000", "proof": "wire-4"}, headers=bb.w)
    assert client.post(f"/v1/invoices/{inv['id']}/pay", headers=pay).json()["status"] == "paid"


def test_user_text_is_escaped_on_the_page(client, bb):
    body = {"customer_id": "acme", "items": [{"name": "<script>alert(1)</script> & co", "basis": "tenant",
                                              "unit_price": "1.00"}]}
    inv = invoice(client, bb, subscribe(client, bb, body)["id"])
    page = client.get(f"/v1/invoices/{inv['id']}.html", headers=bb.w)
    assert "<script>" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")


# -- who may do what --------------------------------------------------------------------------
ROUTES = [("POST", "/v1/subscriptions"), ("GET", "/v1/subscriptions"), ("GET", "/v1/subscriptions/sub_x"),
          ("POST", "/v1/subscriptions/sub_x/items"), ("PATCH", "/v1/subscriptions/sub_x/items/si_x"),
          ("DELETE", "/v1/subscriptions/sub_x/items/si_x"), ("POST", "/v1/subscriptions/sub_x/cancel"),
          ("GET", "/v1/subscriptions/sub_x/upcoming-invoice"), ("POST", "/v1/subscriptions/sub_x/invoices"),
          ("GET", "/v1/invoices"), ("GET", "/v1/invoices/in_x"), ("GET", "/v1/invoices/in_x.html"),
          ("POST", "/v1/invoices/in_x/finalize"), ("POST", "/v1/invoices/in_x/pay"),
          ("POST", "/v1/invoices/in_x/void")]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_needs_a_key_and_a_billing_scope(client, bb, method, path):
    assert_problem(client.request(method, path, json={}), 401, "unauthenticated")
    assert_problem(client.request(method, path, json={}, headers=bb.r), 403, "forbidden")


def test_a_customer_key_sees_and_pays_only_its_own(client, bb, key):
    sid = subscribe(client, bb)["id"]
    acme_sid = subscribe(client, bb, {**SUBSCRIPTION, "customer_id": "acme",
                                      "items": [{"plan_id": "base_license", "quantity": 1}]})["id"]
    inv, acme_inv = invoice(client, bb, sid), invoice(client, bb, acme_sid)
    me = key(bb, "customer", "tenant-123", BILLING)
    assert [s["id"] for s in client.get("/v1/subscriptions", headers=me).json()["data"]] == [sid]
    assert client.get("/v1/subscriptions", params={"customer_id": "acme"}, headers=me).json()["data"] == []
    assert [i["id"] for i in client.get("/v1/invoices", headers=me).json()["data"]] == [inv["id"]]
    assert client.get(f"/v1/invoices/{inv['id']}.html", headers=me).status_code == 200
    assert client.get(f"/v1/subscriptions/{sid}/upcoming-invoice", headers=me).status_code == 200
    assert_problem(client.get(f"/v1/subscriptions/{acme_sid}", headers=me), 404, "subscription_not_found")
    assert_problem(client.get(f"/v1/invoices/{acme_inv['id']}", headers=me), 404, "invoice_not_found")
    assert_problem(client.post(f"/v1/invoices/{acme_inv['id']}/pay", headers=me), 404, "invoice_not_found")
    # It pays its own invoice, but manages nothing.
    client.post(f"{WALLET}/deposits", json={"amount": "8000", "proof": "wire-5"}, headers=bb.w)
    assert client.post(f"/v1/invoices/{inv['id']}/pay", headers=me).json()["status"] == "paid"
    assert_problem(client.post("/v1/subscriptions", json=SUBSCRIPTION, headers=me), 403, "forbidden")
    assert_problem(client.post(f"/v1/subscriptions/{sid}/invoices", headers=me), 403, "forbidden")
    assert_problem(client.post(f"/v1/subscriptions/{sid}/items", json={"pack_id": "intelligence"}, headers=me),
                   403, "forbidden")
    assert_problem(client.post(f"/v1/invoices/{inv['id']}/void", headers=me), 403, "forbidden")
    nobody = key(bb, "customer", None, BILLING)
    assert client.get("/v1/invoices", headers=nobody).json()["data"] == []
    # A provider or device key carrying the customer's id is another principal: it lists nothing.
    for kind in ("provider", "device"):
        other = key(bb, kind, "tenant-123", BILLING)
        for path, params in [("/v1/subscriptions", {}), ("/v1/subscriptions", {"customer_id": "tenant-123"}),
                             ("/v1/invoices", {}), ("/v1/invoices", {"subscription_id": sid})]:
            assert client.get(path, params=params, headers=other).json()["data"] == [], (kind, path, params)


def test_another_tenant_gets_404_for_everything(client, bb, other):
    sub = subscribe(client, bb)
    sid, item = sub["id"], sub["items"][0]["id"]
    inv = invoice(client, bb, sid)["id"]
    for method, path, body in [
        ("GET", f"/v1/subscriptions/{sid}", None), ("POST", f"/v1/subscriptions/{sid}/cancel", None),
        ("POST", f"/v1/subscriptions/{sid}/items", {"pack_id": "intelligence"}),
        ("PATCH", f"/v1/subscriptions/{sid}/items/{item}", {"quantity": 5}),
        ("DELETE", f"/v1/subscriptions/{sid}/items/{item}", None),
        ("GET", f"/v1/subscriptions/{sid}/upcoming-invoice", None), ("POST", f"/v1/subscriptions/{sid}/invoices", None),
    ]:
        assert_problem(client.request(method, path, json=body, headers=other.a), 404, "subscription_not_found")
    for method, suffix in [("GET", ""), ("GET", ".html"), ("POST", "/finalize"), ("POST", "/pay"),
                           ("POST", "/void")]:
        assert_problem(client.request(method, f"/v1/invoices/{inv}{suffix}", headers=other.a), 404,
                       "invoice_not_found")
    assert client.get("/v1/subscriptions", headers=other.a).json()["data"] == []
    assert client.get("/v1/invoices", params={"subscription_id": sid}, headers=other.a).json()["data"] == []
    assert client.get(f"/v1/subscriptions/{sid}", headers=bb.a).status_code == 200  # still there


# -- bad input on every route -----------------------------------------------------------------
@pytest.mark.parametrize(("body", "status", "code"), [
    ({}, 422, "validation_error"),
    ({"customer_id": "tenant-123"}, 422, "validation_error"),
    ({"customer_id": "tenant-123", "items": []}, 422, "validation_error"),
    ({"customer_id": "tenant 123", "items": [{"plan_id": "base_license"}]}, 422, "validation_error"),
    ({**SUBSCRIPTION, "surprise": 1}, 422, "validation_error"),
    ({**SUBSCRIPTION, "currency": "usd"}, 422, "validation_error"),
    ({**SUBSCRIPTION, "currency": "XYZ"}, 404, "asset_not_found"),
    ({**SUBSCRIPTION, "currency": "USDC"}, 422, "invalid_billing_request"),
    ({"customer_id": "x", "items": [{"plan_id": "base_license", "pack_id": "intelligence"}]}, 422, "validation_error"),
    ({"customer_id": "x", "items": [{}]}, 422, "validation_error"),
    ({"customer_id": "x", "items": [{"plan_id": "base_license", "quantity": "5"}]}, 422, "validation_error"),
    ({"customer_id": "x", "items": [{"plan_id": "base_license", "quantity": 5.0}]}, 422, "validation_error"),
    ({"customer_id": "x", "items": [{"plan_id": "base_license", "quantity": -1}]}, 422, "validation_error"),
    ({"customer_id": "x", "items": [{"plan_id": "base_license", "quantity": True}]}, 422, "validation_error"),
    ({"customer_id": "x", "items": [{"plan_id": "base_license"}]}, 422, "invalid_billing_request"),
    ({"customer_id": "x", "items": [{"plan_id": "gold", "quantity": 1}]}, 404, "plan_not_found"),
    ({"customer_id": "x", "items": [{"pack_id": "gold"}]}, 404, "growth_pack_not_found"),
    ({"customer_id": "x", "items": [{"pack_id": "intelligence", "quantity": 3}]}, 422, "invalid_billing_request"),
    ({"customer_id": "x", "items": [{"pack_id": "intelligence", "name": "Intel"}]}, 422, "validation_error"),
    ({"customer_id": "x", "items": [{"unit_price": "1.00", "basis": "camera", "quantity": 1}]}, 422,
     "validation_error"),
    ({"customer_id": "x", "items": [{"name": "a", "basis": "room", "unit_price": "1"}]}, 422, "validation_error"),
    ({"customer_id": "x", "items": [{"name": "a", "basis": "tenant", "unit_price": "1.001"}]}, 422,
     "amount_precision"),
    ({"customer_id": "x", "items": [{"name": "a", "basis": "tenant", "unit_price": "-1"}]}, 422, "amount_not_positive"),
    ({"customer_id": "x", "items": [{"name": "a", "basis": "tenant", "unit_price": "NaN"}]}, 422, "invalid_amount"),
    ({"customer_id": "x", "items": [{"name": "a", "basis": "camera", "unit_price": "99999999999",
                                     "quantity": 10_000_000}]}, 422, "amount_overflow"),
    ({"customer_id": "x", "items": [{"plan_id": "base_license", "quantity": 1}] * 2}, 409,
     "duplicate_subscription_item"),
    ({"customer_id": "x", "items": [{"plan_id": "base_license", "quantity": 1}] * 101}, 422, "validation_error"),
])
def test_create_subscription_refuses_bad_input(client, bb, body, status, code):
    assert_problem(client.post("/v1/subscriptions", json=body, headers=bb.w), status, code)


def test_bad_bodies_are_422_not_500(client, bb):
    h = {**bb.w, "Content-Type": "application/json"}
    for raw in (b"", b"{", b"[]", b"null", b'{"customer_id": "x", "items": [{"plan_id": 1}]}'):
        assert_problem(client.post("/v1/subscriptions", content=raw, headers=h), 422, "validation_error")
    assert_problem(client.post("/v1/subscriptions", json=SUBSCRIPTION, headers={**bb.w, "Idempotency-Key": ""}),
                   422, "invalid_idempotency_key")


def test_item_routes_refuse_bad_input(client, bb):
    sub = subscribe(client, bb, {**SUBSCRIPTION, "items": [*SUBSCRIPTION["items"], {"pack_id": "intelligence"}]})
    sid, base, intel = sub["id"], sub["items"][0]["id"], sub["items"][2]["id"]
    items = f"/v1/subscriptions/{sid}/items"
    for body, status, code in [
        ({}, 422, "validation_error"), ({"plan_id": "base_license"}, 409, "duplicate_subscription_item"),
        ({"pack_id": "active_transport", "proration_behavior": "maybe"}, 422, "validation_error"),
        ({"pack_id": "nope"}, 404, "growth_pack_not_found"),
    ]:
        assert_problem(client.post(items, json=body, headers=bb.w), status, code)
    assert_problem(client.post("/v1/subscriptions/sub_nope/items", json={"pack_id": "active_transport"},
                               headers=bb.w), 404, "subscription_not_found")
    for body, status, code in [
        ({}, 422, "validation_error"), ({"quantity": -1}, 422, "validation_error"),
        ({"quantity": 10_000_001}, 422, "validation_error"), ({"quantity": "7"}, 422, "validation_error"),
        ({"quantity": 7, "extra": True}, 422, "validation_error"),
    ]:
        assert_problem(client.patch(f"{items}/{base}", json=body, headers=bb.w), status, code)
    assert_problem(client.patch(f"{items}/{intel}", json={"quantity": 2}, headers=bb.w), 422,
                   "invalid_billing_request")
    assert_problem(client.patch(f"{items}/si_nope", json={"quantity": 2}, headers=bb.w), 404,
                   "subscription_item_not_found")
    assert_problem(client.patch(f"{items}/bad id", json={"quantity": 2}, headers=bb.w), 422, "validation_error")
    assert_problem(client.delete(f"{items}/{base}", params={"proration_behavior": "x"}, headers=bb.w), 422,
                   "validation_error")
    assert_problem(client.delete(f"{items}/si_nope", headers=bb.w), 404, "subscription_item_not_found")


def test_subscription_and_invoice_routes_refuse_bad_input(client, bb):
    sid = subscribe(client, bb)["id"]
    assert_problem(client.get("/v1/subscriptions/sub_nope", headers=bb.w), 404, "subscription_not_found")
    assert_problem(client.get("/v1/subscriptions/" + "s" * 41, headers=bb.w), 422, "validation_error")
    assert_problem(client.get("/v1/subscriptions/sub_nope/upcoming-invoice", headers=bb.w), 404,
                   "subscription_not_found")
    assert_problem(client.post("/v1/subscriptions/sub_nope/invoices", headers=bb.w), 404, "subscription_not_found")
    assert_problem(client.post("/v1/subscriptions/sub_nope/cancel", headers=bb.w), 404, "subscription_not_found")
    for params in ({"status": "paused"}, {"cursor": "%%%"}, {"limit": 0}, {"limit": 1001},
                   {"customer_id": "a b"}):
        assert_problem(client.get("/v1/subscriptions", params=params, headers=bb.w), 422, "validation_error")
    for params in ({"status": "late"}, {"subscription_id": "a b"}, {"limit": -1}):
        assert_problem(client.get("/v1/invoices", params=params, headers=bb.w), 422, "validation_error")
    assert_problem(client.get("/v1/invoices", params={"cursor": "@@"}, headers=bb.w), 422, "validation_error")
    assert_problem(client.get("/v1/invoices", params={"cursor": "_w"}, headers=bb.w), 422, "invalid_cursor")
    for method, suffix in [("GET", ""), ("GET", ".html"), ("POST", "/finalize"), ("POST", "/pay"),
                           ("POST", "/void")]:
        assert_problem(client.request(method, f"/v1/invoices/in_nope{suffix}", headers=bb.w), 404,
                       "invoice_not_found")
        assert_problem(client.request(method, f"/v1/invoices/in-bad{suffix}", headers=bb.w), 422,
                       "validation_error")
    draft = invoice(client, bb, sid, finalize=False)
    assert_problem(client.post(f"/v1/invoices/{draft['id']}/pay", headers=bb.w), 409, "invalid_invoice_state")
    client.post(f"/v1/invoices/{draft['id']}/finalize", headers=bb.w)
    assert_problem(client.post(f"/v1/invoices/{draft['id']}/finalize", headers=bb.w), 409, "invalid_invoice_state")
    client.post(f"/v1/subscriptions/{sid}/cancel", headers=bb.w)
    assert client.post(f"/v1/subscriptions/{sid}/cancel", headers=bb.w).status_code == 200  # again: a no-op
