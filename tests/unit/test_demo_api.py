"""The demo business systems: deterministic sales and CRM figures, an idempotent report writer."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi.testclient import TestClient

from shared.embedded.demo_api import REGIONS, create_app, sales_figures

DRAFT = {"title": "Q3 2026 sales report", "body": "Revenue grew.", "audience": "board"}


@pytest.fixture
def api() -> TestClient:
    return TestClient(create_app())


def test_healthz(api):
    response = api.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_sales_figures_are_deterministic_and_add_up(api):
    first = api.get("/sales/figures", params={"quarter": "Q3", "year": 2026})
    assert first.status_code == 200
    body = first.json()
    assert body == api.get("/sales/figures", params={"quarter": "Q3", "year": 2026}).json()
    assert body == sales_figures("Q3", 2026).model_dump(mode="json")
    assert (body["quarter"], body["year"], body["currency"]) == ("Q3", 2026, "EUR")
    assert [r["region"] for r in body["regions"]] == list(REGIONS)
    totals = body["totals"]
    assert totals["revenue"] == sum(r["revenue"] for r in body["regions"])
    assert totals["target"] == sum(r["target"] for r in body["regions"])
    assert totals["attainment_pct"] == round(100 * totals["revenue"] / totals["target"], 1)
    for region in body["regions"]:
        assert 800_000 <= region["revenue"] < 2_500_000 and 20 <= region["deals_closed"] < 100


def test_other_periods_tell_other_stories(api):
    q3 = api.get("/sales/figures", params={"quarter": "Q3", "year": 2026}).json()
    q4 = api.get("/sales/figures", params={"quarter": "Q4", "year": 2026}).json()
    assert q3["totals"] != q4["totals"]


@pytest.mark.parametrize("params", [{"quarter": "Q5", "year": 2026}, {"quarter": "Q3", "year": 1999}, {"quarter": "Q3"}])
def test_sales_figures_validate_the_period(api, params):
    assert api.get("/sales/figures", params=params).status_code == 422


def test_top_accounts_sorted_by_revenue_and_limited(api):
    body = api.get("/crm/accounts/top", params={"quarter": "Q3", "year": 2026, "limit": 4}).json()
    revenues = [a["revenue"] for a in body["accounts"]]
    assert len(revenues) == 4 and revenues == sorted(revenues, reverse=True)
    assert all(a["status"] in {"active", "at_risk", "expanding"} for a in body["accounts"])
    default = api.get("/crm/accounts/top", params={"quarter": "Q3", "year": 2026}).json()
    assert default["accounts"] == body["accounts"][:3]
    assert api.get("/crm/accounts/top", params={"quarter": "Q3", "year": 2026, "limit": 21}).status_code == 422


def test_report_write_honours_the_idempotency_key(api):
    first = api.post("/reports", json=DRAFT, headers={"Idempotency-Key": "goal-1:publish_report"})
    assert first.status_code == 201
    report = first.json()
    assert report["report_id"] == "rpt-0001" and report["url"] == "/reports/rpt-0001"
    assert report["idempotency_key"] == "goal-1:publish_report"
    again = api.post("/reports", json=DRAFT, headers={"Idempotency-Key": "goal-1:publish_report"})
    assert again.status_code == 200 and again.json() == report
    assert [r["report_id"] for r in api.get("/reports").json()] == ["rpt-0001"]
    calls = api.get("/_calls").json()
    assert len(calls) == 2 and all(c["completed"] for c in calls)


def test_a_new_key_is_a_new_report(api):
    a = api.post("/reports", json=DRAFT, headers={"Idempotency-Key": "k1"}).json()
    b = api.post("/reports", json=DRAFT, headers={"Idempotency-Key": "k2"}).json()
    assert (a["report_id"], b["report_id"]) == ("rpt-0001", "rpt-0002")
    assert api.get(f"/reports/{b['report_id']}").json() == b
    assert api.get("/reports/rpt-9999").status_code == 404


def test_reusing_a_key_with_another_body_is_a_conflict(api):
    api.post("/reports", json=DRAFT, headers={"Idempotency-Key": "k"})
    response = api.post("/reports", json={**DRAFT, "body": "Different."}, headers={"Idempotency-Key": "k"})
    assert response.status_code == 409
    assert response.json()["detail"]["error"] == "idempotency_key_reused"
    assert len(api.get("/reports").json()) == 1


def test_report_write_needs_an_idempotency_key(api):
    response = api.post("/reports", json=DRAFT)
    assert response.status_code == 400
    assert response.json()["detail"]["error"] == "missing_idempotency_key"
    assert api.get("/reports").json() == []
    assert api.get("/_calls").json()[0]["idempotency_key"] is None


async def test_concurrent_writes_with_one_key_make_one_report():
    app = create_app(write_delay_s=0.05)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://demo") as client:
        responses = await asyncio.gather(
            *(client.post("/reports", json=DRAFT, headers={"Idempotency-Key": "same"}) for _ in range(3))
        )
        assert sorted(r.status_code for r in responses) == [200, 200, 201]
        assert len({r.json()["report_id"] for r in responses}) == 1
        assert len((await client.get("/reports")).json()) == 1


def test_api_key_when_configured():
    api = TestClient(create_app(api_key="s3cret"))
    assert api.get("/healthz").status_code == 200
    assert api.get("/sales/figures", params={"quarter": "Q3", "year": 2026}).status_code == 401
    ok = api.get("/sales/figures", params={"quarter": "Q3", "year": 2026}, headers={"X-Api-Key": "s3cret"})
    assert ok.status_code == 200


def test_sales_figures_of_one_region(api):
    body = api.get("/sales/figures", params={"quarter": "Q3", "year": 2026, "region": "APAC"}).json()
    everything = sales_figures("Q3", 2026)
    assert body["regions"] == [r.model_dump() for r in everything.regions if r.region == "APAC"]
    assert body["totals"]["revenue"] == body["regions"][0]["revenue"]
    assert api.get("/sales/figures", params={"quarter": "Q3", "year": 2026, "region": "Mars"}).status_code == 422


def test_crm_customer_status_is_set_once_per_idempotency_key(api):
    customers = api.get("/crm/customers").json()
    assert [c["customer_id"] for c in customers] == [f"CUST-{n:03d}" for n in range(1, 7)]
    top = api.get("/crm/accounts/top", params={"quarter": "Q3", "year": 2026}).json()["accounts"]
    assert {a["customer_id"] for a in top} <= {c["customer_id"] for c in customers}
    customer = next(c for c in customers if c["status"] != "churned")
    path = f"/crm/customers/{customer['customer_id']}/status"
    first = api.put(path, json={"status": "churned"}, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 200 and first.json()["status"] == "churned"
    assert api.put(path, json={"status": "churned"}, headers={"Idempotency-Key": "k1"}).json() == first.json()
    same = api.put(path, json={"status": "churned"}, headers={"Idempotency-Key": "k2"}).json()
    assert same["history"] == first.json()["history"] and len(same["history"]) == 1  # already churned
    assert api.put(path, json={"status": "active"}, headers={"Idempotency-Key": "k1"}).status_code == 409
    assert api.put(path, json={"status": "active"}).status_code == 400
    assert api.get("/crm/customers", params={"status": "churned"}).json() == [api.get(f"/crm/customers/{customer['customer_id']}").json()]
    assert api.get("/crm/customers/CUST-999").status_code == 404
