"""report.html in a real headless Chromium (selenium): verdict, scorer table and charts visible, filter works."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from llmops.evaluation.gate import apply_gate
from llmops.evaluation.report import write_results
from llmops.evaluation.results import EvalResult, ItemResult, summarise
from llmops.evaluation.suite import GateConfig, SliceGate

CHROMEDRIVER = Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(not CHROMEDRIVER.exists() or shutil.which("chromium") is None,
                                reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")

COUNTRIES = [("France", "Paris", "europe"), ("Japan", "Tokyo", "asia"), ("Kenya", "Nairobi", "africa"),
             ("Peru", "Lima", "americas"), ("Spain", "Madrid", "europe"), ("India", "New Delhi", "asia")]


def run_of(model: str, correct: np.ndarray, rng) -> EvalResult:
    items = []
    for index, ok in enumerate(correct):
        country, capital, region = COUNTRIES[index % len(COUNTRIES)]
        row = {"country": f"{country} {index}", "capital": capital}
        if index % 10:  # every tenth item has no region: reported, not tested as a slice
            row["region"] = region
        answer = capital if ok else "I am not sure"
        scores = {"correct": float(ok), "latency": float(rng.uniform(0.05, 0.3))}
        items.append(ItemResult(row["country"], f"h{index}", "p", row, [answer], scores, {"region": row.get("region")}))
    summaries = {k: summarise(k, [i.scores[k] for i in items], k != "latency") for k in ("correct", "latency")}
    return EvalResult("capitals", "2", model, model, "capitals-qa/1", items, summaries, {}, len(items), 0, 1.0)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    rng = np.random.default_rng(5)
    base = rng.random(120) < 0.8
    cand = base.copy()
    cand[rng.choice(np.flatnonzero(base), 11, replace=False)] = False  # the candidate loses 11 items
    cand[rng.choice(np.flatnonzero(~base), 3, replace=False)] = True  # and wins 3
    candidate, baseline = run_of("capitals/3", cand, rng), run_of("capitals/2", base, rng)
    config = GateConfig(primary="correct", margin=0.02, min_items=50, slices=SliceGate(min_items=10))
    verdict = apply_gate(config, candidate, baseline).to_dict()
    out = tmp_path_factory.mktemp("report")
    return write_results(out, candidate, baseline, verdict)["report"]


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,2400"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def visible_rows(browser):
    from selenium.webdriver.common.by import By

    return [r for r in browser.find_elements(By.CSS_SELECTOR, "#items tbody tr") if r.is_displayed()]


def test_verdict_table_and_charts_are_visible(report, browser):
    from selenium.webdriver.common.by import By

    browser.get(report.as_uri())
    verdict = browser.find_element(By.ID, "verdict")
    assert verdict.is_displayed() and verdict.location["y"] < 200  # at the top
    assert verdict.find_element(By.TAG_NAME, "h2").text in {"Gate: fail", "Gate: investigate"}
    assert "paired delta" in verdict.text and "margin 0.02" in verdict.text
    assert verdict.find_elements(By.TAG_NAME, "li")[0].text  # the reason

    table = browser.find_element(By.ID, "scorer-table")
    assert table.is_displayed()
    headers = [th.text for th in table.find_elements(By.TAG_NAME, "th")]
    assert headers[:4] == ["scorer", "candidate mean", "95% CI", "n"]
    assert {"baseline mean", "paired delta", "90% interval"} <= set(headers)
    correct = table.find_element(By.XPATH, ".//tr[td[1][text()='correct']]").find_elements(By.TAG_NAME, "td")
    assert correct[3].text == "120" and correct[7].text == "-0.067"  # 3 wins - 11 losses over 120 items

    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) >= 3
    for chart in charts:
        assert chart.is_displayed() and chart.size["width"] > 300 and chart.size["height"] > 60
        assert chart.find_elements(By.CSS_SELECTOR, "rect, circle, line")

    slices = browser.find_element(By.ID, "slice-table").text
    assert "region=europe" in slices and "region missing" in slices and "not tested" in slices
    assert '{"' not in browser.find_element(By.TAG_NAME, "body").text  # no raw JSON dumps


def test_disagreeing_items_come_first_and_the_filter_works(report, browser):
    from selenium.webdriver.common.by import By

    browser.get(report.as_uri())
    rows = visible_rows(browser)
    assert len(rows) == 120
    classes = [r.get_attribute("class") for r in rows]
    assert classes[:14] == ["disagree"] * 14 and set(classes[14:]) == {"agree"}

    box = browser.find_element(By.ID, "filter")
    box.send_keys("Kenya 2")
    shown = visible_rows(browser)
    assert shown and all("Kenya 2" in r.text for r in shown) and len(shown) < 120
    assert browser.find_element(By.ID, "shown").text == f"{len(shown)} of 120 items shown"
    box.clear()
    box.send_keys("x")
    box.send_keys("\b")
    assert len(visible_rows(browser)) == 120

    browser.find_element(By.ID, "only-disagree").click()
    assert len(visible_rows(browser)) == 14
    if os.environ.get("LLMOPS_REPORT_SCREENSHOT"):
        browser.find_element(By.ID, "only-disagree").click()
        browser.save_screenshot(os.environ["LLMOPS_REPORT_SCREENSHOT"])


def test_a_run_without_baseline_shows_its_limits_and_no_comparison(tmp_path, browser):
    from selenium.webdriver.common.by import By

    rng = np.random.default_rng(9)
    single = run_of("capitals/1", rng.random(30) < 0.8, rng)
    verdict = apply_gate(GateConfig(primary="correct", min_score=0.95), single, None).to_dict()
    browser.get(write_results(tmp_path, single, None, verdict)["report"].as_uri())
    assert browser.find_element(By.CSS_SELECTOR, "#verdict h2").text == "Gate: fail"
    assert "correct: mean >= 0.95" in browser.find_element(By.CSS_SELECTOR, "#verdict .checks").text
    headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#scorer-table th")]
    assert headers == ["scorer", "candidate mean", "95% CI", "n"]
    assert not browser.find_element(By.ID, "only-disagree").is_displayed()
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart")[0].is_displayed()
    browser.find_element(By.ID, "filter").send_keys("Peru 3")
    assert [r.find_element(By.TAG_NAME, "td").text for r in visible_rows(browser)] == ["Peru 3"]
