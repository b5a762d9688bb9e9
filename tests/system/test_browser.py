"""Both UIs in a real browser (Debian's Chromium driven by Playwright, headless, offline).

Prefect: find the pipeline deployment, open its run form (the typed config, with defaults
and descriptions), change a field, submit, follow the run to Completed and read its report.
MLflow: find the experiment, select the two nightly challengers, open the comparison and see
their metrics. Screenshots go to tests/artifacts/; assertions are on page content.
"""

from __future__ import annotations

import re

import pytest
from mlflow import MlflowClient

from tests.system.conftest import ARTIFACTS, Runs, Stack, chromium_or_skip

pytestmark = [pytest.mark.system, pytest.mark.slow]

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def page():
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(60_000)
        yield context.new_page()
        browser.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def form_field(page, label: str):
    """The input of a schema-form property, found by its visible label."""
    title = page.locator("label", has_text=label)
    return title.locator("xpath=ancestor::div[contains(@class,'schema-form-property')][1]").locator(
        "input"
    )


def test_prefect_ui_runs_the_pipeline_from_its_form(page, stack: Stack, runs: Runs) -> None:
    page.goto(f"{stack.prefect_url}/deployments")
    page.get_by_role("link", name="pipeline", exact=True).click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run").click()
    steps = form_field(page, "Max Steps (Optional)")
    assert steps.input_value() == "30"  # the served config (configs/tiny.yaml) is the default
    assert page.get_by_text("Optimizer steps in total (all epochs).").is_visible()
    steps.fill("12")
    steps.scroll_into_view_if_needed()
    shot(page, "prefect-1-run-form")
    submit(page)
    page.get_by_text("scheduled to start now").first.wait_for()  # the UI's confirmation
    flow_run_id = _newest_run_of(stack, "genpar-pipeline/pipeline", max_steps=12)
    run = stack.wait(flow_run_id)
    assert run["state_type"] == "COMPLETED", run["state"]
    page.goto(f"{stack.prefect_url}/runs/flow-run/{flow_run_id}")  # the toast's "View run"
    heading = page.locator(".page-heading").first
    heading.get_by_text("Completed", exact=True).wait_for()
    assert heading.get_by_text("tiny-vae-digits").count()  # pipeline, model, dataset
    shot(page, "prefect-2-run-completed")
    page.get_by_text("Artifacts", exact=True).click()
    page.get_by_text("tiny-pipeline").first.click()
    page.get_by_text(re.compile(r"Decision: registered as version \d+ of tiny")).wait_for()
    assert page.get_by_text("eval/", exact=False).count()
    assert page.get_by_role("link", name=re.compile("MLflow run")).count()
    shot(page, "prefect-3-run-report")


def submit(page, attempts: int = 3) -> None:
    """Press Submit until the UI creates the flow run.

    The UI does not retry when Prefect's SQLite database is busy (the server answers 503;
    Prefect's own clients retry): a person would press Submit again, and so does this.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    def answered(r) -> bool:
        return r.request.method == "POST" and ("create_flow_run" in r.url or r.status >= 500)

    seen = []
    for _ in range(attempts):
        try:
            with page.expect_response(answered, timeout=60_000) as answer:
                page.get_by_role("button", name="Submit").click()
        except PlaywrightTimeout:
            shot(page, "prefect-submit-failed")  # e.g. a validation message in the form
            raise
        seen.append(f"{answer.value.status} {answer.value.url}")
        if answer.value.status == 201:
            return
        page.wait_for_timeout(2000)
    shot(page, "prefect-submit-failed")
    raise AssertionError(f"the form did not create a flow run: {seen}")


def _newest_run_of(stack: Stack, deployment: str, max_steps: int) -> str:
    """The flow run the form created: the deployment's newest, with the changed value."""
    dep = stack.deployment(deployment)
    body = {"deployments": {"id": {"any_": [dep["id"]]}}, "sort": "EXPECTED_START_TIME_DESC"}
    found = [
        r["id"]
        for r in stack.post("/flow_runs/filter", body)
        if r["parameters"]["config"]["train"]["max_steps"] == max_steps
    ]
    assert found, f"no run of {deployment} with train.max_steps={max_steps}"
    return found[0]


def test_mlflow_ui_compares_two_runs(page, stack: Stack, runs: Runs) -> None:
    for flow_run in runs.nightly:
        stack.wait(flow_run)
    client = MlflowClient(stack.mlflow_url)
    exp = client.get_experiment_by_name("tiny").experiment_id
    nightly = client.search_runs([exp], filter_string="tags.`genpar.retrain.decision` != ''")
    run_ids = [r.info.run_id for r in nightly]
    assert len(run_ids) == 2

    page.goto(stack.mlflow_url)
    page.get_by_text("Model training", exact=True).click()
    page.get_by_role("link", name="Experiments").first.click()
    page.get_by_role("link", name="tiny", exact=True).first.click()
    page.get_by_text("matching runs").wait_for()
    for run_id in run_ids:
        row = page.locator(f".ag-row[row-id='{run_id}']").first
        row.locator(".ag-selection-checkbox .ag-checkbox-input-wrapper").click()
    shot(page, "mlflow-1-runs-selected")
    page.get_by_role("button", name="Compare").first.click()
    page.get_by_text("Comparing 2 Runs").wait_for()
    primary = nightly[0].data.tags["genpar.retrain.primary_metric"]
    first_eval = min(k for k in nightly[0].data.metrics if k.startswith("eval/"))
    for text in ("Metrics", primary, first_eval, *run_ids):  # the metric table, both runs
        assert page.get_by_text(text, exact=True).count(), text
    shot(page, "mlflow-2-comparison")
