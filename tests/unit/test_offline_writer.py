"""The offline model: deterministic, extractive Markdown built from the input data."""

from __future__ import annotations

import pytest

from shared.embedded.demo_api import sales_figures
from shared.models.offline_writer import classify, write
from shared.models.prompts import build_messages, parse_messages

INSTRUCTION = "Summarise Q3 2026 sales performance for the board."
ACCOUNTS = {
    "quarter": "Q3",
    "year": 2026,
    "accounts": [
        {"name": "Northwind Traders", "region": "EMEA", "revenue": 180_000, "status": "active"},
        {"name": "Contoso Retail", "region": "Americas", "revenue": 412_500, "status": "expanding"},
        {"name": "Tailspin Toys", "region": "APAC", "revenue": 99_000, "status": "at_risk"},
    ],
}


def report_data() -> dict:
    return {"figures": sales_figures("Q3", 2026).model_dump(), "top_accounts": ACCOUNTS}


def test_same_input_same_text():
    assert write("summarise", INSTRUCTION, report_data()) == write("summarise", INSTRUCTION, report_data())


def test_headline_comes_from_the_instruction():
    text = write("summarise", INSTRUCTION, report_data())
    assert text.splitlines()[0] == "## Q3 2026 sales performance for the board"
    assert write("write", "  draft a memo. ", {"a": 1}).startswith("## Memo\n")
    assert write("write", "", {"a": 1}).startswith("## Summary\n")
    assert write("summarise", "Summarize the figures", {"a": 1}).startswith("## Figures\n")
    assert write("write", "Send the top 5 accounts", {"a": 1}).startswith("## Send the top 5 accounts\n")
    assert write("write", "Write", {"a": 1}).startswith("## Write\n")


def test_figures_from_the_input_appear_in_the_text():
    data = report_data()
    totals = data["figures"]["totals"]
    text = write("summarise", INSTRUCTION, data)
    assert (f"In total: revenue {totals['revenue']:,}, target {totals['target']:,}, "
            f"attainment pct {totals['attainment_pct']:,.1f}, growth pct {totals['growth_pct']:,.1f}.") in text
    for region in data["figures"]["regions"]:
        assert f"| {region['region']} | {region['revenue']:,} | {region['target']:,} |" in text
    assert "| Contoso Retail | Americas | 412,500 | expanding |" in text


def test_highest_and_lowest_by_the_measure():
    data = report_data()
    regions = sorted(data["figures"]["regions"], key=lambda r: r["revenue"])
    text = write("summarise", INSTRUCTION, data)
    assert (f"Highest revenue: {regions[-1]['region']} ({regions[-1]['revenue']:,}); "
            f"lowest: {regions[0]['region']} ({regions[0]['revenue']:,}).") in text
    assert "Highest revenue: Contoso Retail (412,500); lowest: Tailspin Toys (99,000)." in text


def test_sections_follow_the_input_order_with_titles():
    text = write("summarise", INSTRUCTION, report_data())
    assert text.index("### Figures") < text.index("### Top accounts")
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_table_puts_name_columns_first_then_measures_then_the_rest():
    rows = [{"note": "n1", "score": 1.5, "deals": 3, "label": "a"}, {"note": "n2", "score": 2.5, "deals": 4, "label": "b"}]
    text = write("write", "x", {"rows": rows})
    assert "| label | score | note | deals |" in text
    assert "|---|---|---|---|" in text
    assert "| a | 1.5 | n1 | 3 |" in text


def test_table_columns_keep_only_scalars_and_underscores_become_spaces():
    rows = [{"region": "EMEA", "deals_closed": 5, "tags": ["x"], "meta": {"k": 1}}]
    text = write("write", "x", {"rows": rows})
    assert "| region | deals closed |" in text
    assert "tags" not in text and "meta" not in text


def test_without_a_measure_the_first_numeric_column_ranks():
    rows = [{"name": "a", "deals": 3}, {"name": "b", "deals": 8}]
    assert "Highest deals: b (8); lowest: a (3)." in write("write", "x", {"rows": rows})


def test_single_row_or_no_name_column_gives_no_ranking():
    assert "Highest" not in write("write", "x", {"rows": [{"name": "a", "revenue": 5}]})
    assert "Highest" not in write("write", "x", {"rows": [{"kind": "a", "revenue": 5}, {"kind": "b", "revenue": 6}]})


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (2026, "2026"),  # a year keeps its digits together
        (9_999, "9999"),
        (10_000, "10,000"),
        (-1_234_567, "-1,234,567"),
        (1234.56, "1,234.6"),
        (0.04, "0.0"),
        (True, "True"),
        (None, "None"),
        ("EUR", "EUR"),
    ],
)
def test_number_formatting(value, shown):
    assert write("write", "x", {"value": value}) == f"## X\n\n- Value: {shown}\n"


def test_scalars_of_a_record_are_listed_and_nested_records_get_their_own_section():
    text = write("write", "x", {"figures": {"currency": "EUR", "detail": {"open_deals": 12}}})
    assert "- currency: EUR" in text
    assert "### Figures detail" in text and "- open deals: 12" in text


def test_no_data_says_so():
    assert write("write", "Report", {}) == "## Report\n\nNo input data was provided.\n"
    assert "No input data" not in write("write", "Report", {"a": 1})


def test_classify_picks_the_first_label_whose_words_appear():
    labels = {"labels": ["billing", "tech_support", "sales"]}
    assert classify("Route the ticket", {**labels, "text": "My invoice is wrong: billing error"}) == "billing"
    assert classify("Route the ticket", {**labels, "text": "I need support with login"}) == "tech_support"
    assert classify("Route the ticket", {**labels, "text": "nothing relevant"}) == "billing"  # first label
    assert classify("x", {}) == "unknown"
    assert write("classify", "Route", {**labels, "text": "sales question"}) == "sales"


def test_prompt_round_trip_feeds_the_writer_the_same_data():
    data = report_data()
    task, instruction, parsed = parse_messages(build_messages("summarise", INSTRUCTION, data))
    assert (task, instruction, parsed) == ("summarise", INSTRUCTION, data)


def test_lenient_parse_of_foreign_messages():
    task, instruction, data = parse_messages([{"role": "user", "content": "just do it"}])
    assert (task, instruction, data) == ("write", "just do it", {})
