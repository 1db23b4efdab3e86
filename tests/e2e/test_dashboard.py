"""The web dashboard in a real browser (Debian's chromium driven by Playwright, no downloaded
browser) against a real platform started by `tp up`: log in, submit a tiny SFT job from the
form and watch its loss curve grow live until it succeeds, cancel another, keep page state
across reloads, recover live views after the API restarts, and run a pipeline template to
the end in its DAG view. Screenshots of the main pages are taken on the way; with
TP_TEST_SCREENSHOTS=docs/screenshots (`make screenshots`) they replace the ones in docs/."""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
# Chromium on a machine with no outside network: no background connections, no sandbox (root).
POINTS = "() => Number(document.querySelector('[data-test=chart]')?.dataset.points || 0)"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def dash(start_module_platform):  # type: ignore[no-untyped-def]
    # Two simulated 24 GB GPUs (named as such) for the configurator's test; CPU jobs are
    # unaffected.
    return start_module_platform(redis_db=6, TP_SIMULATED_GPUS="2x24GB")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure_test_packages.sh (make test does)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, dash: Any) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=dash.base_url)
    context.set_default_timeout(20_000)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wanted = os.environ.get("TP_TEST_SCREENSHOTS")
    folder = (ROOT / wanted) if wanted else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _login(page: Page, token: str) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login"))
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def _api(dash: Any, method: str, path: str, **kwargs: Any) -> Any:
    with dash.client() as client:
        response = client.request(method, f"/api/v1{path}", **kwargs)
        assert response.status_code < 400, response.text
        return response.json() if response.content else None


def _submit(dash: Any, name: str, steps: int) -> int:
    body = {
        "name": name,
        "algorithm": "sft",
        "model": "tiny-qwen2",
        "dataset": "tiny-sft",
        "hyperparameters": {"max_steps": steps, "learning_rate": 1e-3, "save_steps": 100000},
    }
    return int(_api(dash, "POST", "/jobs", json=body)["id"])


def _points(page: Page) -> int:
    chart = page.locator("[data-test=chart]").first
    value = chart.get_attribute("data-points") if chart.count() else None
    return int(value or 0)


def _badge(page: Page) -> str:
    return page.locator(".topline [data-test=status]").inner_text()


def test_login_refuses_a_wrong_token_and_logout_forgets_the_right_one(
    page: Page, dash: Any
) -> None:
    page.goto("/jobs?status=running")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.fill("input[name=token]", "not-the-token")
    page.click("button[type=submit]")
    expect(page.locator("[data-test=login-error]")).to_contain_text("refused")
    page.fill("input[name=token]", dash.token)
    page.click("button[type=submit]")
    # Back where the user wanted to go, filter included.
    expect(page).to_have_url(re.compile(r"/jobs\?status=running$"))
    expect(page.locator("[data-test=filter-status]")).to_have_value("running")
    page.click("[data-test=logout]")
    expect(page).to_have_url(re.compile(r"/login"))
    page.goto("/jobs")
    expect(page).to_have_url(re.compile(r"/login"))
    assert page.evaluate("() => sessionStorage.length") == 0


def test_sft_job_from_the_form_shows_its_loss_growing_live_until_it_succeeds(
    page: Page, dash: Any, shots: Path
) -> None:
    _login(page, dash.token)
    page.click("a:has-text('Jobs')")
    page.click("[data-test=new-job]")
    form = page.locator("[data-test=job-form]")
    expect(form).to_be_visible()
    form.locator("input[name=name]").fill("dashboard sft")
    form.locator("select[name=engine]").select_option("trl/sft")
    form.locator("select[name=model]").select_option("tiny-qwen2")
    form.locator("select[name=dataset]").select_option("tiny-sft")
    form.locator("input[name=param-max_steps]").fill("150")
    # Enough to write answer-shaped text ("1 + 1 = 11.") from the assistant turns alone: the
    # evaluation test below compares it with the untrained model.
    form.locator("input[name=param-learning_rate]").fill("0.005")
    form.locator("input[name=param-save_steps]").fill("50")
    page.click("[data-test=preview]")
    plan = page.locator("[data-test=plan]")
    expect(plan).to_contain_text("local")
    expect(plan).to_contain_text("sft")
    page.click("[data-test=submit]")
    expect(page).to_have_url(re.compile(r"/jobs/\d+"))
    job_id = int(page.url.rsplit("/", 1)[1].split("?")[0])
    page.evaluate("() => { window.__sameDocument = true; }")

    # The curve grows while the job runs: two readings, both before it succeeded.
    deadline = time.monotonic() + 240
    seen: list[int] = []
    while time.monotonic() < deadline and len(set(seen)) < 2:
        if _badge(page) == "succeeded":
            break
        points = _points(page)
        if points > 0 and (not seen or points > seen[-1]):
            seen.append(points)
        page.wait_for_timeout(250)
    assert len(seen) >= 2 and seen[-1] > seen[0], f"no live growth seen: {seen}"

    expect(page.locator(".topline [data-test=status]")).to_have_text("succeeded", timeout=300_000)
    assert page.evaluate("() => window.__sameDocument === true"), "the page was reloaded"

    # Every number shown is the API's: the last loss step and value, the point count.
    metrics = _api(dash, "GET", f"/jobs/{job_id}/metrics", params={"key": "loss"})
    losses = [p for p in metrics["points"] if p["key"] == "loss"]
    row = page.locator("[data-latest=loss] td")
    expect(row.nth(1)).to_have_text(str(losses[-1]["step"]))
    assert math.isclose(float(row.nth(2).inner_text()), losses[-1]["value"], rel_tol=1e-3)
    expect(page.locator("[data-test=chart]").first).to_have_attribute(
        "data-points", str(len(losses))
    )
    page.screenshot(path=str(shots / "job-detail.png"))

    page.click("[data-tab=checkpoints]")
    steps = sorted(c["step"] for c in _api(dash, "GET", f"/jobs/{job_id}/checkpoints"))
    shown = page.locator("[data-test=checkpoints] tbody tr td:first-child").all_inner_texts()
    assert sorted(int(s) for s in shown) == steps and 50 in steps
    page.click("[data-tab=events]")
    expect(page.locator("[data-test=events]")).to_contain_text("succeeded")
    page.click("[data-tab=log]")
    expect(page.locator("[data-test=log]")).not_to_be_empty()


def test_cancel_from_the_job_page(page: Page, dash: Any) -> None:
    job_id = _submit(dash, "dashboard cancel", 100_000)
    _login(page, dash.token)
    page.goto(f"/jobs/{job_id}")
    expect(page.get_by_role("heading", name=re.compile(f"Job #{job_id}"))).to_be_visible()
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("[data-test=cancel]")
    expect(page.locator(".topline [data-test=status]")).to_have_text("cancelled", timeout=120_000)
    assert _api(dash, "GET", f"/jobs/{job_id}")["status"] == "cancelled"
    expect(page.locator("[data-test=cancel]")).to_be_disabled()
    expect(page.locator("[data-test=retry]")).to_be_enabled()
    # A finished job's page says so (no green "live"); a missing job's stops reconnecting.
    expect(page.locator("[data-test=live-state]")).to_have_text("ended")
    page.goto("/jobs/999999")
    expect(page.locator("[data-test=live-state]")).to_have_text("not found", timeout=30_000)


def test_reload_keeps_page_state_and_live_views_recover_after_an_api_restart(
    page: Page, dash: Any
) -> None:
    _login(page, dash.token)
    page.goto("/jobs?status=cancelled&q=cancel&sort=priority")
    expect(page.locator("[data-test=jobs-table] tbody tr")).to_have_count(1)
    page.reload()
    expect(page.locator("[data-test=filter-status]")).to_have_value("cancelled")
    expect(page.locator("input[type=search]")).to_have_value("cancel")
    expect(page.locator("th[aria-sort=ascending]")).to_contain_text("Priority")
    expect(page.locator("[data-test=jobs-table] tbody tr")).to_have_count(1)

    job_id = _submit(dash, "dashboard restart", 100_000)
    page.goto(f"/jobs/{job_id}?keys=loss,learning_rate&smooth=0.6")
    expect(page.locator("[data-test=live-state]")).to_have_text("live")
    page.wait_for_function(f"{POINTS} > 0", timeout=240_000)
    page.reload()
    expect(page.locator("input[data-key=learning_rate]")).to_be_checked()
    expect(page.locator("input[aria-label=Smoothing]")).to_have_value("0.6")

    dash.kill_service("api")
    expect(page.locator("[data-test=live-state]")).to_have_text("reconnecting…")
    before = _points(page)
    dash.tp("up", "--timeout", "120", check=True)
    expect(page.locator("[data-test=live-state]")).to_have_text("live", timeout=60_000)
    page.wait_for_function(f"{POINTS} > {before}", timeout=120_000)
    # No step twice, none missing, after the resume: exactly what the API stored.
    _api(dash, "POST", f"/jobs/{job_id}/pause")
    expect(page.locator(".topline [data-test=status]")).to_have_text("paused", timeout=120_000)
    stored = _api(dash, "GET", f"/jobs/{job_id}/metrics", params={"key": ["loss", "learning_rate"]})
    expect(page.locator("[data-test=chart]").first).to_have_attribute(
        "data-points", str(len(stored["points"]))
    )
    _api(dash, "POST", f"/jobs/{job_id}/cancel")


def _cancelled(dash: Any, name: str, backend: str, algorithm: str, priority: int) -> int:
    """A job that never trains: submitted, then cancelled at once (before it starts, mostly)."""
    dataset = {"dpo": "tiny-prefs"}.get(algorithm, "tiny-sft")
    body = {
        "name": name,
        "backend": backend,
        "algorithm": algorithm,
        "model": "tiny-qwen2",
        "dataset": dataset,
        "hyperparameters": (
            {"total_steps": 2, "device": "cpu"} if backend == "verl" else {"max_steps": 2}
        ),
        "priority": priority,
    }
    job_id = int(_api(dash, "POST", "/jobs", json=body)["id"])
    _api(dash, "POST", f"/jobs/{job_id}/cancel")
    return job_id


def test_jobs_list_search_filters_and_sort_typed_by_a_user_change_rows_and_url_and_survive_reload(
    page: Page, dash: Any
) -> None:
    # Three cheap jobs of their own (no other test's names contain "sieve").
    a = _cancelled(dash, "sieve bravo", "trl", "sft", 3)
    b = _cancelled(dash, "sieve charlie", "trl", "dpo", 7)
    c = _cancelled(dash, "sieve alpha", "verl", "sft", 5)
    deadline = time.monotonic() + 60
    while any(_api(dash, "GET", f"/jobs/{j}")["status"] != "cancelled" for j in (a, b, c)):
        assert time.monotonic() < deadline, "the jobs were not cancelled"
        time.sleep(0.5)
    rows = page.locator("[data-test=jobs-table] tbody tr")
    empty = page.get_by_text("No job matches these filters.")

    def shows(query: str, ids: list[int]) -> None:
        expect(page).to_have_url(re.compile(rf"/jobs\?{re.escape(query)}$"))
        if ids:
            expect(rows).to_have_count(len(ids))
            for index, job_id in enumerate(ids):
                expect(rows.nth(index)).to_have_attribute("data-job", str(job_id))
        else:
            expect(empty).to_be_visible()

    _login(page, dash.token)
    page.goto("/jobs?page=2")  # typing goes back to the first page, and keeps what was typed
    search = page.locator("input[type=search]")
    search.press_sequentially("sieve", delay=30)
    shows("q=sieve", [c, b, a])
    search.press_sequentially(" b", delay=30)
    shows("q=sieve+b", [a])
    search.press("Backspace")
    search.press("Backspace")
    shows("q=sieve", [c, b, a])

    state = page.locator("[data-test=filter-status]")
    state.select_option("succeeded")
    shows("q=sieve&status=succeeded", [])
    expect(state).to_have_value("succeeded")  # the select does not snap back
    state.select_option(label="active or waiting")
    expect(page).to_have_url(re.compile(r"status=pending(%2C|,)queued(%2C|,)"))
    expect(empty).to_be_visible()
    state.select_option("cancelled")
    shows("q=sieve&status=cancelled", [c, b, a])
    algorithm = page.locator("[data-test=filter-algorithm]")
    algorithm.select_option("dpo")
    shows("q=sieve&status=cancelled&algorithm=dpo", [b])
    algorithm.select_option("sft")
    shows("q=sieve&status=cancelled&algorithm=sft", [c, a])
    backend = page.locator("[data-test=filter-backend]")
    backend.select_option("verl")
    shows("q=sieve&status=cancelled&algorithm=sft&backend=verl", [c])
    algorithm.select_option("")
    backend.select_option("trl")
    shows("q=sieve&status=cancelled&backend=trl", [b, a])
    backend.select_option("")
    expect(backend).to_have_value("")
    shows("q=sieve&status=cancelled", [c, b, a])

    # Each column header: the first click sorts descending, the next ascending.
    base = "q=sieve&status=cancelled"
    for label, sort, ids in [
        ("ID", "id", [a, b, c]),
        ("Name", "-name", [b, a, c]),
        ("Name", "name", [c, a, b]),
        ("Priority", "-priority", [b, c, a]),
        ("Priority", "priority", [a, c, b]),
        ("Algorithm", "-algorithm", [c, a, b]),
        ("Algorithm", "algorithm", [b, c, a]),
        ("State", "-status", [c, b, a]),  # one state: newest first
        ("Created", "-created_at", [c, b, a]),
        ("Created", "created_at", [a, b, c]),
    ]:
        page.locator("[data-test=jobs-table] th button.sort", has_text=label).click()
        shows(f"{base}&sort={sort}", ids)
        header = page.locator("th", has_text=label)
        expect(header).to_have_attribute("aria-sort", "descending" if "-" in sort else "ascending")

    page.locator("[data-test=jobs-table] th button.sort", has_text="Name").click()
    page.reload()
    shows(f"{base}&sort=-name", [b, a, c])
    expect(search).to_have_value("sieve")
    expect(state).to_have_value("cancelled")
    expect(page.locator("th[aria-sort=descending]")).to_contain_text("Name")


def test_settings_token_made_in_the_browser_works_until_revoked_there(
    page: Page, dash: Any
) -> None:
    import httpx

    _login(page, dash.token)
    page.goto("/settings?tab=tokens")
    expect(page.locator("[data-test=session]")).to_contain_text("admin")
    page.fill("input[name=token-name]", "browser-made")
    page.locator("[data-test=create-token] button[type=submit]").click()
    secret = page.locator("[data-test=new-token-value]").input_value()
    assert len(secret) >= 40 and secret not in page.url

    def status_with(token: str) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.get(f"{dash.base_url}/api/v1/queues", headers=headers, timeout=30).status_code

    assert status_with(secret) == 200
    page.click("[data-test=dismiss-token]")
    expect(page.locator("[data-test=new-token-value]")).to_have_count(0)
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("[data-token=browser-made] [data-test=revoke]").click()
    expect(page.locator("[data-token=browser-made]")).to_contain_text("revoked")
    assert status_with(secret) == 401

    # The inventory shows this machine's CPU training slot, as the API lists it.
    page.goto("/gpus")
    hosts = _api(dash, "GET", "/gpus")["hosts"]
    inventory = page.locator("[data-test=inventory]")
    for host in hosts:
        expect(inventory).to_contain_text(host["name"])


def test_pipeline_template_from_the_browser_runs_to_the_end_in_its_dag(
    page: Page, dash: Any, shots: Path
) -> None:
    _login(page, dash.token)
    page.click("a:has-text('Pipelines')")
    page.click("[data-test=new-pipeline]")
    page.click("[data-template=sft-grpo-evaluate]")
    expect(page.locator("[data-test=yaml]")).to_have_value(re.compile(r"name: sft-grpo-evaluate"))
    for name, value in (("sft_steps", "20"), ("rl_steps", "3"), ("eval_samples", "10")):
        page.fill(f"input[name=param-{name}]", value)
    page.click("[data-test=validate]")
    expect(page.locator("[data-test=validation-order]")).to_have_text("sft → grpo → evaluate")
    page.click("[data-test=submit-pipeline]")
    expect(page).to_have_url(re.compile(r"/pipelines/\d+"))
    pipeline_id = int(page.url.rsplit("/", 1)[1].split("?")[0])
    page.evaluate("() => { window.__sameDocument = true; }")

    dag = page.locator("svg [data-stage]")
    expect(dag).to_have_count(3)
    # Stage states change on screen as the pipeline advances, without a reload.
    expect(page.locator("[data-stage=sft]")).to_have_attribute(
        "data-status", re.compile("running|succeeded"), timeout=120_000
    )
    for stage in ("sft", "grpo", "evaluate"):
        expect(page.locator(f"[data-stage={stage}]")).to_have_attribute(
            "data-status", "succeeded", timeout=600_000
        )
    expect(page.locator(".topline [data-test=status]")).to_have_text("succeeded", timeout=60_000)
    assert page.evaluate("() => window.__sameDocument === true"), "the page was reloaded"
    stored = _api(dash, "GET", f"/pipelines/{pipeline_id}")
    assert stored["status"] == "succeeded"
    # The evaluate stage's key metric on screen is the API's.
    evaluate = next(s for s in stored["stages"] if s["name"] == "evaluate")
    if evaluate["key_metric"] is not None:
        metric = evaluate["key_metric"]
        expect(page.locator("[data-stage=evaluate]")).to_contain_text(metric["name"])
    page.screenshot(path=str(shots / "pipeline-dag.png"))

    page.goto(f"/pipelines/{pipeline_id}?tab=events")
    page.reload()
    expect(page.get_by_role("tab", name="Events")).to_have_attribute("aria-selected", "true")


def test_overview_shows_the_apis_counts_queues_and_recent_pipelines(
    page: Page, dash: Any, shots: Path
) -> None:
    _login(page, dash.token)
    expect(page.locator("[data-test=job-counts]")).to_be_visible()
    for status in ("succeeded", "cancelled"):
        total = _api(dash, "GET", "/jobs", params={"status": status, "limit": 1})["total"]
        card = page.locator(f"[data-test=job-counts] [data-status={status}] .value")
        expect(card).to_have_text(str(total))
    for pipeline in _api(dash, "GET", "/pipelines", params={"limit": 6})["items"]:
        expect(page.get_by_text(f"#{pipeline['id']} {pipeline['name']}")).to_be_visible()
    expect(page.locator("[data-test=no-waiting]")).to_be_visible()  # nothing queued now
    page.screenshot(path=str(shots / "overview.png"))


PAGES = ["Overview", "Jobs", "Pipelines", "Evaluations", "Datasets", "Models", "Surgery"]
PAGES += ["Configurator", "Serving & chat", "GPUs & hosts", "Projects", "Settings"]


def test_on_a_phone_the_sidebar_is_a_menu_and_every_page_fits_the_width(
    page: Page, dash: Any, shots: Path
) -> None:
    # A training with a curve where the form's test ran first (as under `make screenshots`).
    wanted = {"status": "succeeded", "algorithm": "sft", "limit": 1}
    done = _api(dash, "GET", "/jobs", params=wanted)["items"]
    job_id = done[0]["id"] if done else _cancelled(dash, "phone-sized", "trl", "sft", 5)
    page.set_viewport_size({"width": 390, "height": 844})
    menu = page.locator("[data-test=menu]")

    def fits(name: str) -> None:
        expect(page.locator("main h1")).to_be_visible()
        expect(page.locator("[aria-busy=true]")).to_have_count(0)  # its data is on screen
        wide = page.evaluate("() => document.documentElement.scrollWidth")
        assert wide <= 390, f"{name} ({page.url}) is {wide} px wide on a 390 px screen"

    _login(page, dash.token)
    # The sidebar is a top bar: its links open from the menu, and a page chosen closes it.
    expect(page.get_by_role("link", name="Projects", exact=True)).to_be_hidden()
    for name in PAGES:
        menu.click()
        expect(menu).to_have_attribute("aria-expanded", "true")
        page.get_by_role("navigation").get_by_role("link", name=name, exact=True).click()
        expect(menu).to_have_attribute("aria-expanded", "false")
        fits(name)

    page.goto("/")
    expect(page.locator("[data-test=job-counts]")).to_be_visible()
    fits("Overview")
    page.screenshot(path=str(shots / "overview-mobile.png"))
    page.goto("/jobs")
    expect(page.locator(f"[data-test=jobs-table] tr[data-job='{job_id}']")).to_be_visible()
    fits("Jobs")
    page.screenshot(path=str(shots / "jobs-mobile.png"))
    page.goto(f"/jobs/{job_id}")
    expect(page.locator("[data-test=live-state]")).to_have_text("ended")
    if done:
        page.wait_for_function(f"{POINTS} > 0")
    fits("Job detail")
    page.screenshot(path=str(shots / "job-detail-mobile.png"))


def test_an_evaluation_from_the_browser_then_a_compare_filtered_to_regressed_samples(
    page: Page, dash: Any, shots: Path
) -> None:
    jobs = _api(dash, "GET", "/jobs", params={"status": "succeeded", "limit": 500})["items"]
    trained = next(j for j in jobs if j["name"] == "dashboard sft")  # the form test's job
    # Prompts the job trained on, with a label. A tiny model's outputs rarely share a word with
    # a short answer (ROUGE-L 0 for both models), so each answer also carries words such
    # models do write: two different models then score differently sample by sample.
    common = "what is the assistant answer 1 11 111 1111 11111111"
    rows = []
    for line in (ROOT / "training_platform/assets/datasets/tiny-sft.jsonl").open():
        user, assistant = json.loads(line)["messages"]
        kind = "arithmetic" if user["content"].startswith("What is") else "words"
        answer = f"{assistant['content']} {common}"
        rows.append({"prompt": user["content"], "answer": answer, "kind": kind})
        if len(rows) == 8:
            break
    body = "".join(json.dumps(row) + "\n" for row in rows).encode()
    _api(dash, "POST", "/datasets", params={"name": "seen", "filename": "seen.jsonl"}, content=body)
    generation = {"max_samples": 8, "max_new_tokens": 12}
    base = _api(
        dash,
        "POST",
        "/evaluations",
        json={
            "name": "base",
            "model": "tiny-qwen2",
            "dataset": "seen",
            "scorer": "rouge_l",
            "generation": generation,
        },
    )
    _login(page, dash.token)
    page.click("a:has-text('Evaluations')")
    form = page.locator("[data-test=new-evaluation]")
    form.locator("input[name=name]").fill("tuned")
    form.locator("select[name=target]").select_option("job")
    form.locator("input[name=job]").fill(str(trained["id"]))
    form.locator("select[name=dataset]").select_option("seen")
    form.locator("select[name=scorer]").select_option("rouge_l")
    form.locator("input[name=max_samples]").fill(str(generation["max_samples"]))
    form.locator("input[name=max_new_tokens]").fill(str(generation["max_new_tokens"]))
    page.click("[data-test=submit-evaluation]")
    expect(page).to_have_url(re.compile(r"/evaluations/\d+$"))
    tuned_id = int(page.url.rsplit("/", 1)[1])
    expect(page.locator(".topline [data-test=status]")).to_have_text("succeeded", timeout=300_000)

    # The score and the breakdown by the dataset's label are the API's.
    stored = _api(dash, "GET", f"/evaluations/{tuned_id}")
    assert stored["model"] == f"job-{trained['id']}-final"
    summary = stored["summary"]["rouge_l"]
    expect(page.locator("[data-scorer=rouge_l]")).to_contain_text(f"n={summary['n']}")
    page.locator("[data-test=breakdown] select[name=label]").select_option("kind")
    groups = _api(dash, "GET", f"/evaluations/{tuned_id}/breakdown", params={"label": "kind"})
    rows = page.locator("[data-test=breakdown-table] tbody tr")
    expect(rows).to_have_count(len(groups["groups"]))
    page.screenshot(path=str(shots / "evaluation-result.png"))

    deadline = time.monotonic() + 300
    while _api(dash, "GET", f"/evaluations/{base['id']}")["status"] == "pending":
        assert time.monotonic() < deadline, "the base evaluation did not end"
        time.sleep(1)
    # A is whichever side the other regressed against (the two models' outputs differ).
    first = _api(dash, "GET", "/evaluations/compare", params={"a": base["id"], "b": tuned_id})
    a, b = (base["id"], tuned_id) if first["stats"]["regressed"] else (tuned_id, base["id"])
    regressed = _api(
        dash,
        "GET",
        "/evaluations/compare",
        params={"a": a, "b": b, "change": "regressed", "limit": 500},
    )
    assert regressed["total"] > 0, first["stats"]

    page.click("a:has-text('Evaluations')")
    page.locator("select[name=compare-a]").select_option(str(a))
    page.locator("select[name=compare-b]").select_option(str(b))
    page.click("[data-test=open-compare]")
    expect(page).to_have_url(re.compile(r"/evaluations/compare\?"))
    stats = page.locator("[data-test=comparison-stats]")
    expect(stats).to_contain_text(f"on {regressed['stats']['n']} shared samples")
    stats.locator("button[data-change=regressed]").click()
    expect(page).to_have_url(re.compile(r"change=regressed"))
    shown = page.locator("[data-test=compare-table] tbody tr")
    expect(shown).to_have_count(min(regressed["total"], 25))
    for sample in regressed["samples"][:25]:
        row = page.locator(f"[data-test=compare-table] tr[data-sample='{sample['idx']}']")
        expect(row).to_have_attribute("data-change", "regressed")
        expect(row.locator("[data-test=output-a]")).to_contain_text(sample["output_a"].strip())
        expect(row.locator("[data-test=output-b]")).to_contain_text(sample["output_b"].strip())
    page.screenshot(path=str(shots / "evaluation-compare.png"))
    # Candidates ranked against a baseline: the figures of the same compare.
    page.goto(f"/evaluations/rank?baseline={a}&candidate={b}")
    ranked = page.locator(f"[data-test=ranking-table] tr[data-candidate='{b}']")
    wanted = regressed["stats"]
    expect(ranked.locator("td").nth(4)).to_have_text(str(wanted["improved"]))
    expect(ranked.locator("td").nth(5)).to_have_text(str(wanted["regressed"]))
    expect(ranked.locator("td").nth(6)).to_have_text(wanted["test"])


def test_a_suite_run_from_the_browser_shows_each_dataset_and_their_mean(
    page: Page, dash: Any, shots: Path
) -> None:
    items = [{"dataset": "tiny-math-eval", "scorer": "numeric", "max_samples": 4}]
    _api(dash, "POST", "/evaluations/suites", json={"name": "guard", "items": items})
    _login(page, dash.token)
    page.click("a:has-text('Evaluations')")
    page.click("[data-test=suites-link]")
    expect(page.locator("[data-test=suites] tr[data-suite=guard]")).to_contain_text(
        "tiny-math-eval (numeric)"
    )
    expect(page.locator("[data-test=suite-runs]")).to_contain_text("No suite runs yet.")
    form = page.locator("[data-test=run-suite]")
    form.locator("select[name=suite]").select_option("guard")
    form.locator("select[name=model]").select_option("tiny-qwen2")
    form.locator("input[name=run-name]").fill("browser")
    page.click("[data-test=start-suite-run]")
    row = page.locator("[data-test=suite-runs-table] tr[data-run]").first
    expect(row.locator("[data-test=status]")).to_contain_text("succeeded", timeout=180_000)
    run = _api(dash, "GET", "/evaluations/suite-runs", params={"suite": "guard"})["items"][0]
    assert run["status"] == "succeeded" and run["mean"] is not None
    expect(row.locator("[data-test=mean]")).not_to_have_text("—")
    expect(row).to_contain_text("tiny-math-eval")
    page.screenshot(path=str(shots / "evaluation-suites.png"))


def test_serve_a_trained_model_from_the_browser_and_chat_with_it(
    page: Page, dash: Any, shots: Path
) -> None:
    jobs = _api(dash, "GET", "/jobs", params={"status": "succeeded", "limit": 500})["items"]
    trained = next(j for j in jobs if j["name"] == "dashboard sft")
    model = f"job-{trained['id']}-final"  # registered by the evaluation test
    _login(page, dash.token)
    page.click("a:has-text('Serving & chat')")
    expect(page.locator("[data-test=chat]")).to_contain_text("No served model answers yet.")
    form = page.locator("[data-test=serve-form]")
    form.locator("select[name=serve-model]").select_option(model)
    form.locator("select[name=serve-engine]").select_option("transformers")
    page.click("[data-test=start-serving]")
    row = page.locator("[data-test=served-table] tr[data-served]").first
    expect(row.locator("[data-ready=true]")).to_be_visible(timeout=180_000)
    job_id = int(str(row.get_attribute("data-served")))

    chat = page.locator("[data-test=chat]")
    chat.locator("select[name=chat-job]").select_option(str(job_id))
    chat.locator("input[name=max-tokens]").fill("12")
    chat.locator("textarea[name=message]").fill("What is 2 + 3?")
    page.click("[data-test=send]")
    expect(chat.locator("[data-role=user]")).to_have_count(1)
    reply = chat.locator("[data-role=assistant]")
    expect(reply).to_have_count(1, timeout=60_000)
    expect(reply.locator("strong")).to_have_text(model)
    # The served model's own (greedy) answer to the same conversation, through the API.
    asked = {
        "messages": [{"role": "user", "content": "What is 2 + 3?"}],
        "max_tokens": 12,
        "temperature": 0,
    }
    answer = _api(dash, "POST", f"/serving/{job_id}/v1/chat/completions", json=asked)
    assert answer["model"] == model
    text = answer["choices"][0]["message"]["content"] or "(empty reply)"
    assert reply.locator("pre").inner_text().strip() == text.strip()
    page.screenshot(path=str(shots / "serving-chat.png"))

    row.locator("button:has-text('Stop')").click()
    deadline = time.monotonic() + 60
    while _api(dash, "GET", f"/jobs/{job_id}")["status"] != "cancelled":
        assert time.monotonic() < deadline, "the serve job was not stopped"
        time.sleep(0.5)


def test_merge_two_models_from_the_surgery_page_and_open_the_lineage(
    page: Page, dash: Any, shots: Path
) -> None:
    from training_platform.assets.tiny import build_tiny_model

    directory = build_tiny_model(dash.home / "models" / "browser-other", seed=21)
    _api(dash, "POST", "/models", json={"name": "browser-other", "path": str(directory)})
    _login(page, dash.token)
    page.click("nav a:has-text('Surgery')")
    form = page.locator("[data-test=merge-form]")
    form.locator("input[name=merge-name]").fill("browser-slerp")
    form.locator("select[name=method]").select_option("slerp")
    form.locator("select[name=base]").select_option("tiny-qwen2")
    form.locator("select[name=input-0]").select_option("browser-other")
    form.locator("input[name=t]").fill("0.4")
    page.click("[data-test=check-merge]")
    expect(page.locator("[data-test=merge-preview]")).to_contain_text("Fits together")
    expect(page.locator("[data-test=merge-preview]")).to_contain_text("takes seconds")
    # A refusal reads as the API's reason, next to the form.
    form.locator("input[name=t]").fill("1.5")
    page.click("[data-test=check-merge]")
    expect(page.locator("[data-test=merge-error]")).to_contain_text("parameters.t")
    form.locator("input[name=t]").fill("0.4")
    page.click("[data-test=run-merge]")
    row = page.locator("[data-test=merges] tr[data-merge=browser-slerp]")
    expect(row.locator("[data-test=status]")).to_contain_text("succeeded", timeout=120_000)
    page.screenshot(path=str(shots / "surgery.png"))
    row.locator("[data-test=open-lineage]").click()
    expect(page).to_have_url(re.compile(r"/models\?lineage=browser-slerp"))
    tree = page.locator("[data-test=lineage-tree]")
    expect(tree.locator("li[data-parent=tiny-qwen2][data-relation=base]")).to_be_visible()
    expect(tree.locator("li[data-parent=browser-other][data-relation=merged]")).to_be_visible()
    expect(page.locator("[data-test=models] tr[data-model=browser-slerp]")).to_contain_text("merge")
    page.screenshot(path=str(shots / "models.png"))
    merge = _api(dash, "GET", "/merges")[0]
    assert merge["name"] == "browser-slerp" and merge["parameters"] == {"t": 0.4}
    # The merge's "Evaluate" link opens the evaluation form with the merged model chosen.
    page.go_back()
    page.locator("[data-test=merges] tr[data-merge=browser-slerp] a:has-text('Evaluate')").click()
    expect(page.locator("select[name=model]")).to_have_value("browser-slerp")


def test_upload_a_dataset_see_statistics_a_loss_mask_and_accept_a_dedup(
    page: Page, dash: Any, shots: Path, tmp_path: Path
) -> None:
    rows = [
        {
            "instruction": question,
            "input": "",
            "output": answer,
            "tenant": ["acme", "globex"][i % 2],
        }
        for i, (question, answer) in enumerate(
            [
                ("Who painted the Mona Lisa?", "Leonardo da Vinci."),
                ("What is the capital city of Australia?", "Canberra."),
                ("How many legs does a spider have?", "Eight."),
                ("Which planet is known as the red planet?", "Mars."),
                ("What is the chemical symbol for gold?", "Au."),
                ("  WHO PAINTED THE MONA LISA? ", "Leonardo da Vinci."),
            ]
        )
    ]
    upload = tmp_path / "browser-alpaca.jsonl"
    upload.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _login(page, dash.token)
    page.click("nav a:has-text('Datasets')")
    page.locator("[data-test=drop-zone] input[type=file]").set_input_files(str(upload))
    expect(page.locator("[data-test=preview-format]")).to_have_text("alpaca")
    expect(page.locator("[data-test=preview-rule]")).to_have_text("alpaca: has instruction, output")
    expect(page.locator("[data-test=preview]")).to_contain_text('"role":"assistant"')
    expect(page.locator("[data-test=upload-name]")).to_have_value("browser-alpaca")
    page.click("[data-test=upload-keep]")
    expect(page.locator("[data-test=uploaded]")).to_contain_text("browser-alpaca version 1: 6 rows")
    expect(page).to_have_url(re.compile(r"/datasets\?dataset=browser-alpaca"))

    stats = page.locator("[data-test=statistics]")
    stats.locator("[data-test=analysis-model]").select_option("tiny-qwen2")
    stats.locator("[data-test=analysis-max-length]").fill("30")
    stats.locator("[data-test=analysis-labels]").fill("tenant")
    stats.locator("[data-test=analyze]").click()
    expect(stats.locator("[data-test=stats-rows]")).to_have_text("6", timeout=120_000)
    expect(stats.locator("[data-histogram=length] .bar").first).to_be_visible()
    expect(stats.locator("[data-label=tenant]")).to_contain_text("acme")
    expect(stats.locator("[data-label=tenant]")).to_contain_text("50.0%")
    expect(stats.locator("[data-test=stats-truncation]")).to_contain_text("longer than 30")
    expect(stats.locator("[data-test=stats-duplicates]")).to_have_text("1")
    page.screenshot(path=str(shots / "datasets-statistics.png"), full_page=True)

    page.locator("[data-test=rows] tr[data-row='1'] [data-test=view-sample]").click()
    sample = page.locator("[data-test=sample]")
    # the API loads the model's tokenizer on its first render: allow for that import
    expect(sample.locator("[data-loss=true]").first).to_contain_text("Leonardo", timeout=60_000)
    expect(sample.locator("[data-loss=false]").first).to_be_visible()
    assert "Mona Lisa" not in "".join(sample.locator("[data-loss=true]").all_inner_texts())

    dedup = page.locator("[data-test=dedup]")
    dedup.locator("[data-test=run-dedup]").click()
    expect(dedup.locator("[data-test=dedup-status]")).to_have_text("review", timeout=180_000)
    expect(dedup.locator("[data-test=review-dropped]")).to_have_text("1")
    expect(dedup.locator(".cluster[data-stage=exact] [data-dropped='6']")).to_be_visible()
    page.screenshot(path=str(shots / "datasets-dedup.png"), full_page=True)
    dedup.locator("[data-test=accept-dedup]").click()
    expect(dedup.locator("[data-test=accepted]")).to_contain_text("Version 2 written: 5 rows")
    expect(page.locator("[data-test=versions] tr[data-version='2']")).to_contain_text("dedup")
    version = _api(dash, "GET", "/datasets/browser-alpaca")
    assert (version["version"], version["rows"]) == (2, 5)


def test_the_new_job_form_shows_the_memory_estimate_and_applies_a_configuration_that_fits(
    page: Page, dash: Any, shots: Path
) -> None:
    # Qwen2.5-1.5B's shape, config only: full fine-tuning does not fit 24 GB, LoRA does.
    directory = dash.home / "models" / "qwen-1.5b-shape"
    directory.mkdir(parents=True)
    from training_platform.compute.calibrate import QWEN2_1_5B as config

    (directory / "config.json").write_text(json.dumps(config))
    _api(dash, "POST", "/models", json={"name": "qwen-1.5b-shape", "path": str(directory)})
    _login(page, dash.token)
    page.goto("/jobs/new")
    form = page.locator("[data-test=job-form]")
    form.locator("select[name=engine]").select_option("trl/sft")
    # The bundled model is preselected (not the first by name, such as a pipeline's output),
    # and each model says where it came from.
    expect(form.locator("select[name=model]")).to_have_value("tiny-qwen2")
    expect(form.locator("[data-test=model-origin]")).to_contain_text("bundled")
    models = form.locator("select[name=model] option").all_inner_texts()
    assert "qwen-1.5b-shape · registered directory" in [m.strip() for m in models], models
    # Choices show their options, the default selected.
    for name, choices in (
        ("lr_scheduler_type", ["linear", "cosine", "constant", "constant_with_warmup"]),
        ("assistant_only_loss", ["true", "false"]),
    ):
        select = form.locator(f"select[name=param-{name}]")
        shown = [o.strip() for o in select.locator("option").all_inner_texts()]
        assert shown[1:] == choices and shown[0].startswith("default ("), shown
        assert select.evaluate("s => s.selectedIndex") == 0
    form.locator("select[name=model]").select_option("qwen-1.5b-shape")
    form.locator("input[name=gpus]").fill("1")
    form.locator("input[name=param-per_device_train_batch_size]").fill("4")
    estimate = page.locator("[data-test=estimate]")
    expect(estimate.locator("[data-test=estimate-verdict]")).to_contain_text(
        "does not fit Simulated GPU (24.0 GB)"
    )
    expected = _api(
        dash,
        "POST",
        "/compute/estimate",
        json={
            "model": "qwen-1.5b-shape",
            "backend": "trl",
            "algorithm": "sft",
            "hyperparameters": {"per_device_train_batch_size": 4},
            "resources": {"gpus": 1},
        },
    )
    shown = f"~{expected['estimate']['device_mb'] / 1024:.1f} GB"
    expect(estimate.locator("[data-test=estimate-peak]")).to_have_text(shown)
    option = estimate.locator("[data-test=recommendation]").first
    expect(option).to_contain_text(expected["recommendations"][0]["summary"])
    page.screenshot(path=str(shots / "job-estimate.png"))
    option.locator("[data-test=apply-recommendation]").click()
    # The form now holds the configuration, and its estimate fits.
    expect(form.locator("input[name=param-lora]")).to_be_checked()
    rank = form.locator('input[name="param-lora.rank"]')
    expect(rank).to_have_value("16")
    expect(form.locator('input[name="param-lora.alpha"]')).to_have_attribute("placeholder", "16")
    expect(estimate.locator("[data-test=estimate-verdict]")).to_contain_text("fits Simulated GPU")
    expect(estimate.locator("[data-test=estimate-verdict]")).not_to_contain_text("does not")
    # LoRA's fields are checked as typed, and an error goes once the value is fixed.
    rank.fill("0")
    expect(form.locator('[data-test="error-lora.rank"]')).to_have_text("must be ≥ 1")
    rank.fill("8")
    expect(form.locator('[data-test="error-lora.rank"]')).to_have_count(0)
    # The configurator lists which models fit each kind of GPU.
    page.click("nav a:has-text('Configurator')")
    row = page.locator('[data-test=advice] tr[data-model="qwen-1.5b-shape"]')
    expect(row).to_contain_text("1.54B")
    expect(row.locator("td").nth(3)).to_contain_text("fits")  # LoRA
    expect(row.locator("td").nth(4)).to_contain_text("no")  # full fine-tuning
    expect(page.locator("[data-test=accuracy]")).to_contain_text("no data yet")


def test_a_viewer_sees_the_platform_without_what_only_members_and_admins_may_do(
    page: Page, dash: Any
) -> None:
    _api(dash, "POST", "/users", json={"name": "watcher", "role": "viewer"})
    token = _api(dash, "POST", "/tokens", json={"name": "watcher-ui", "user": "watcher"})["token"]
    job_id = _submit(dash, "seen by a viewer", 2)
    _login(page, token)
    expect(page.locator("[data-test=whoami]")).to_have_text("watcher (viewer)")
    page.goto("/jobs")
    expect(page.locator(f"[data-job='{job_id}']").first).to_be_visible()
    expect(page.locator("[data-test=new-job]")).to_have_count(0)
    # the list is told of a new job over the overview socket (it polls no more)
    page.evaluate("() => { window.__sameDocument = true; }")
    pushed = _submit(dash, "pushed to the list", 2)
    expect(page.locator(f"[data-job='{pushed}']")).to_be_visible()
    assert page.evaluate("() => window.__sameDocument === true"), "the page was reloaded"
    page.goto(f"/jobs/{job_id}")
    expect(page.get_by_role("heading", name=re.compile(f"Job #{job_id}"))).to_be_visible()
    expect(page.locator("[data-test=actions]")).to_have_count(0)
    page.goto("/settings")
    expect(page.get_by_role("tab", name="API tokens")).to_be_visible()
    expect(page.get_by_role("tab", name="Webhooks")).to_have_count(0)
    # an admin still sees them
    page.click("[data-test=logout]")
    _login(page, dash.token)
    expect(page.locator("[data-test=whoami]")).to_have_text("admin (admin)")
    page.goto("/jobs")
    expect(page.locator("[data-test=new-job]")).to_be_visible()
    page.goto("/settings")
    expect(page.get_by_role("tab", name="Webhooks")).to_be_visible()
    # Projects: an admin creates one from the page (a maximum below the guarantee is refused
    # on its field); viewers see quotas and GPU-hours without the form.
    page.goto("/projects")
    form = page.locator("[data-test=create-project]")
    form.locator("input[name=project-name]").fill("web-team")
    form.locator("input[name=guaranteed]").fill("2")
    form.locator("input[name=max]").fill("1")
    form.get_by_role("button", name="Create project").click()
    expect(form.locator("[data-field-error=max_gpus]")).to_contain_text("below the guarantee")
    form.locator("input[name=max]").fill("3")
    form.get_by_role("button", name="Create project").click()
    row = page.locator("[data-test=projects-table] [data-project=web-team]")
    expect(row).to_contain_text("none yet")
    page.click("[data-test=logout]")
    _login(page, token)
    page.goto("/projects")
    expect(page.locator("[data-test=projects-table] [data-project=default]")).to_be_visible()
    expect(page.locator("[data-test=create-project]")).to_have_count(0)


def test_api_docs_render_with_no_network_beyond_the_platform(page: Page) -> None:
    # Every request to another host is refused and recorded: Swagger UI and ReDoc must come
    # from the platform itself (FastAPI's own pages load them from a CDN).
    elsewhere: list[str] = []

    def outside(route: Route) -> None:
        url = urlsplit(route.request.url)
        if url.scheme in ("data", "blob") or url.hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.context.route("**/*", outside)
    # What the pages' Content-Security-Policy stopped: only the Redocly logo that ReDoc's
    # sidebar hard-codes (cdn.redoc.ly), which the policy keeps the browser from even asking.
    refused: list[str] = []
    page.on("console", lambda m: "Content Security Policy" in m.text and refused.append(m.text))
    page.goto("/docs")
    operation = page.locator(".opblock-get:has([data-path='/api/v1/jobs'])")
    # Both render the whole OpenAPI document in the browser: seconds on a loaded machine.
    expect(operation).to_be_visible(timeout=60_000)
    expect(operation).to_contain_text("List Jobs")
    # A request body comes with an example a user can send as it is (tests/api/test_api_docs.py
    # checks every model has one that passes validation).
    submit = page.locator(".opblock-post:has([data-path='/api/v1/jobs'])")
    submit.locator(".opblock-summary").click()
    expect(submit.locator(".opblock-section-request-body")).to_contain_text('"model": "tiny-qwen2"')
    page.goto("/redoc")
    heading = page.locator(".api-content h2").filter(has_text=re.compile(r"^\s*List Jobs\s*$"))
    expect(heading).to_be_visible(timeout=60_000)
    assert elsewhere == [], f"the API docs reached beyond the platform: {elsewhere}"
    unexpected = [m for m in refused if "https://cdn.redoc.ly/redoc/logo-mini.svg" not in m]
    assert unexpected == [], f"the API docs' Content-Security-Policy refused: {unexpected}"
