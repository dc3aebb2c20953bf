"""review.html in a real headless Chromium: a smoke run's page is filtered, sorted, read and labelled
with the mouse and the keyboard; the exported labels go through `selfalign curate --labels`; hostile
text stays text. Skipped, with the reason, only where no browser can be driven (review_browser.py)."""

import json
import os
from pathlib import Path

import pytest
from review_browser import chromium, open_page, wait, why_no_browser

from selfalign.config import load_config, packaged_config_path
from selfalign.labels import Label, rater_vs_labels
from selfalign.pipeline import load_rated, run_pipeline
from selfalign.review import page_rows, render_page, write_review

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(why_no_browser()), reason=why_no_browser() or "-")]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    downloads = tmp_path_factory.mktemp("downloads")
    driver = chromium(downloads)
    yield driver, downloads
    driver.quit()


def by(driver, css: str):
    return driver.find_elements("css selector", css)


def counts(driver) -> str:
    return driver.find_element("id", "counts").text


def select(driver, sel_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", sel_id)).select_by_value(value)


def press(driver, keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(keys).perform()


def test_review_a_smoke_run_label_it_and_curate_with_the_labels(browser, tmp_path: Path, tiny_model: Path) -> None:
    from click.testing import CliRunner
    from selenium.webdriver.common.keys import Keys

    from selfalign.cli import main

    driver, downloads = browser
    cfg = load_config(packaged_config_path("smoke"), [
        f"run.out_dir={tmp_path / 'run'}", f"models.base={tiny_model}", f"models.rater={tiny_model}", "run.threads=1",
        "curation.mode=combined", "curation.threshold=4.0"])
    run = run_pipeline(cfg, until="train-forward")
    rated = load_rated(run.path("curate_1", "rated.jsonl"))
    n, rater_kept = len(rated), {r.source_id for r in rated if r.score is not None and r.score >= 4.0}
    assert 0 < len(rater_kept) < n
    page = write_review(run.dir)
    open_page(driver, page)
    assert counts(driver).startswith(f"{n} of {n} pairs match (rater keeps {len(rater_kept)} of them)")
    about = driver.find_element("id", "about").text
    assert str(run.dir.resolve()) in about and "combined" in about and "curate_1" in about
    assert len(by(driver, "#rows tr")) == n
    assert "ifd" in by(driver, "#rows tr")[0].text  # the likelihood signals are shown

    # filter: the rater's decision, then a text search (the page's count against the file's)
    select(driver, "rater", "dropped")
    assert counts(driver).startswith(f"{n - len(rater_kept)} of {n} pairs match (rater keeps 0")
    select(driver, "rater", "")
    q = rated[0].response.split()[0].lower()
    want = sum(q in f"{r.source_id}\n{r.source}\n{r.instruction}\n{r.response}\n{r.reasoning}".lower() for r in rated)
    driver.find_element("id", "q").send_keys(q)
    assert counts(driver).startswith(f"{want} of {n} pairs match")
    assert len(by(driver, "#rows tr")) == want
    driver.find_element("id", "q").clear()
    driver.execute_script("document.getElementById('q').dispatchEvent(new Event('input'))")
    assert counts(driver).startswith(f"{n} of {n}")

    # sort, low scores first; open the first response
    select(driver, "sort", "score-asc")
    low = sorted(rated, key=lambda r: (r.score, rated.index(r)))
    first = by(driver, "#rows tr")[0]
    assert first.find_elements("css selector", "td")[8].text.endswith(low[0].source_id)
    first.find_element("css selector", ".resp summary").click()
    full = wait(lambda: first.find_elements("css selector", ".resp .full"), what="the opened response")[0]
    assert full.get_attribute("textContent") == low[0].response

    # keyboard: row 1 keep (against the rater: it is the lowest), row 2 drop; the cursor moves on
    first.find_elements("css selector", "td")[0].click()
    press(driver, "yn")
    # mouse: drop the highest-scored pair (the rater keeps it)
    top = by(driver, "#rows tr")[-1]
    assert top.find_elements("css selector", "td")[8].text.endswith(low[-1].source_id)
    top.find_element("css selector", "button.drop").click()
    assert by(driver, "#rows tr")[-1].find_element("css selector", "button.drop").get_attribute("aria-pressed") == "true"
    note = by(driver, "#rows tr")[-1].find_element("css selector", "input.note")
    note.send_keys("off topic <b>x</b> yn")  # typed keys stay in the field: no label changes
    note.send_keys(Keys.TAB)
    want_labels = {low[0].source_id: "keep", low[1].source_id: "drop", low[-1].source_id: "drop"}
    assert driver.execute_script("return window.__review.labels()") == want_labels
    assert "your labels: 1 keep, 2 drop, 2 against the rater" in counts(driver)
    select(driver, "mine", "against")
    assert counts(driver).startswith(f"2 of {n} pairs match")
    select(driver, "mine", "")

    # the labels survive a reload (localStorage), then are exported as a file
    open_page(driver, page)
    assert "your labels: 1 keep, 2 drop" in counts(driver)
    shot = tmp_path / "review.png"
    driver.save_screenshot(str(shot))
    print(f"\nscreenshot of the review page: {shot}")
    driver.find_element("id", "export").click()
    exported = wait(lambda: [p for p in downloads.glob("labels-curate_1*.jsonl")], what="the labels download")[0]
    rows = wait(lambda: [json.loads(x) for x in exported.read_text().splitlines()] or None, what="the file's rows")
    assert {r["source_id"]: r["decision"] for r in rows} == want_labels
    assert {r["source_id"]: r["note"] for r in rows if r["note"]} == {low[-1].source_id: "off topic <b>x</b> yn"}
    assert {r["instruction"] for r in rows} <= {r.instruction for r in rated}

    # selfalign curate --labels: the person overrules the rater; precision/recall against the labels
    res = CliRunner().invoke(main, ["curate", "--config", str(run.dir / "config.yaml"), "--labels", str(exported)])
    assert res.exit_code == 0, res.output
    data = [json.loads(x) for x in run.path("curated_1", "data.jsonl").read_text().splitlines()]
    assert {r["source_id"] for r in data} == (rater_kept | {low[0].source_id}) - {low[-1].source_id}
    assert {r["source_id"]: r["human"] for r in data if r["human"]} == {low[0].source_id: "keep"}
    stats = json.loads(run.path("manifest.json").read_text())["counts"]["curation_1"]
    labels = {k: Label(k, v) for k, v in want_labels.items()}
    assert stats["rater_vs_labels"] == rater_vs_labels(rated, labels, 4.0)
    assert (stats["overruled_to_keep"], stats["overruled_to_drop"]) == (1, 1)
    at4 = next(r for r in stats["rater_vs_labels"] if r["threshold"] == 4.0)
    assert (at4["rater_kept"], at4["human_kept"], at4["precision"], at4["recall"]) == (1, 1, 0.0, 0.0)
    assert "labelled" in run.path("curated_1", "README.md").read_text()
    # the forward model retrains on the new curated set; unchanged labels leave it be
    cfg2 = load_config(run.dir / "config.yaml", [f"curation.labels={exported}"])
    assert "train-forward-1" in run_pipeline(cfg2, until="train-forward").ran
    assert "train-forward-1" not in run_pipeline(cfg2, until="train-forward").ran


HOSTILE = ["</script><script>window.__pwned = 1</script>", "<img src=x onerror=\"window.__pwned = 2\">",
           "<b>bold</b> &amp; <!-- comment -->", "\u202eRTL override \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
           "zero\u200bwidth\u200d\ufeffjoiners", "{{DATA}} /*SCRIPT*/"]


def test_hostile_text_renders_as_text(browser, tmp_path: Path) -> None:
    driver, _ = browser
    long = ("x" * 99_990) + HOSTILE[0]
    rated = [{"instruction": h, "response": (long if i == 0 else h * 3), "source_id": f"h{i}{h[:8]}", "source": h,
              "score": 4.0 + i / 10, "reasoning": h, "parts": {"value": i}} for i, h in enumerate(HOSTILE)]
    page = tmp_path / "hostile.html"
    page.write_text(render_page({"title": HOSTILE[0], "key": "hostile", "n": len(rated), "run": HOSTILE[1]},
                                page_rows(rated, [], 4.0)), encoding="utf-8")
    open_page(driver, page)
    assert driver.execute_script("return window.__pwned === undefined")
    assert driver.title == "</script><script>window.__pwned = 1</script>"
    assert not by(driver, "#rows img, #rows b, #about img")
    select(driver, "sort", "order")
    cells = [tr.find_elements("css selector", "td")[4].get_attribute("textContent") for tr in by(driver, "#rows tr")]
    assert cells == HOSTILE
    first = by(driver, "#rows tr")[0]
    first.find_element("css selector", ".resp summary").click()
    full = wait(lambda: first.find_elements("css selector", ".resp .full"), what="the long response")[0]
    assert full.get_attribute("textContent") == long and len(long) > 100_000
    driver.find_element("id", "q").send_keys("onerror")
    assert counts(driver).startswith(f"1 of {len(HOSTILE)} pairs match")
    assert driver.execute_script("return window.__pwned === undefined")


@pytest.mark.skipif(not os.environ.get("SELFALIGN_REVIEW_RUN"), reason="set SELFALIGN_REVIEW_RUN to a default run's folder")
def test_review_a_default_run(browser, tmp_path: Path) -> None:
    """The page of a finished default run (`selfalign run`): every rated pair listed, filters work."""
    driver, _ = browser
    run = Path(os.environ["SELFALIGN_REVIEW_RUN"])
    page = write_review(run, out=tmp_path / "review.html")
    n = json.loads(page.read_text().split('id="review-data">')[1].split("</script>")[0])["meta"]["n"]
    open_page(driver, page)
    assert counts(driver).startswith(f"{n} of {n} pairs match")
    select(driver, "rater", "kept")
    kept = int(counts(driver).split()[0])
    assert 0 < kept <= n
    driver.save_screenshot(str(tmp_path / "review-default.png"))
    print(f"\nscreenshot of the default run's review page: {tmp_path / 'review-default.png'}")


def test_pages_and_keys_over_many_rows(browser, tmp_path: Path) -> None:
    driver, _ = browser
    rated = [{"instruction": f"instruction {i}", "response": f"response {i}", "source_id": f"p{i:03d}", "source": "lima",
              "score": 1 + (i % 41) / 10, "reasoning": ""} for i in range(120)]
    page = tmp_path / "many.html"
    page.write_text(render_page({"title": "many", "key": f"many-{tmp_path}", "n": 120, "threshold": 4.0},
                                page_rows(rated, [], 4.0)), encoding="utf-8")
    open_page(driver, page)
    select(driver, "sort", "order")
    assert driver.find_element("id", "page").text == "Rows 1–50 of 120" and len(by(driver, "#rows tr")) == 50
    driver.find_element("tag name", "h1").click()
    press(driver, "]")
    assert driver.find_element("id", "page").text == "Rows 51–100 of 120"
    assert "p050" in driver.switch_to.active_element.text  # the first row of the page has the focus
    press(driver, "k")  # back over the page boundary
    assert driver.find_element("id", "page").text == "Rows 1–50 of 120" and "p049" in driver.switch_to.active_element.text
    press(driver, "y")  # keep p049 and move on (to the next page)
    assert "p050" in driver.switch_to.active_element.text
    press(driver, "/")
    assert driver.switch_to.active_element.get_attribute("id") == "q"
    press(driver, "p11")  # typed into the search field: no label, a filter
    assert counts(driver).startswith("10 of 120 pairs match") and driver.execute_script("return window.__review.labels()") == {"p049": "keep"}
    assert driver.find_element("id", "next").get_attribute("disabled") is not None
