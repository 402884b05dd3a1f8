"""The Dagster UI in a real browser (Debian's Chromium, driven by Selenium and chromedriver),
over a real webserver and daemon on a Postgres-backed instance, as `make dev` runs them.

A file the SFTP account cannot read fails; the asset's page shows one partition failed and one
materialized; the failed one is rerun with the GraphQL mutation the UI's "Materialize" sends,
after the cause is fixed, and the page shows both materialized. Screenshots go to a temporary
folder, or to SCREENSHOTS_DIR when set: `make screenshots` refreshes docs/screenshots/ with them.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from devstack.local_stack import free_port, stop_group
from sftp_minio_assets_tests.support import PROJECT

pytestmark = pytest.mark.integration  # the servers, a webserver, a daemon and Chromium

BIN = Path(sys.executable).parent  # the virtualenv's dagster-webserver and dagster-daemon

LAUNCH = """
mutation LaunchPipelineExecution($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""
RUN_STATUS = "query Run($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def dagster_ui(env, tmp_path):
    """dagster-webserver and dagster-daemon on the stack's PostgreSQL, sensors on."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    name = f"dagster_{env.bucket.removeprefix('test-')}"
    env.stack.postgres.create_database(name)
    port = free_port()
    environment = {
        **os.environ,
        **env.stack.env(bucket=env.bucket),
        "SFTP_ROOT": str(env.root),
        "TRANSFER_DB_URL": env.db_url,
        "MIN_FILE_AGE_SECONDS": "0",
        "TRANSFER_RETRIES": "0",
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_DB": name,
    }
    workspace = ["-w", str(PROJECT / "workspace.yaml")]
    logs = open(tmp_path / "dagster.log", "wb")  # noqa: SIM115
    processes = [
        subprocess.Popen(
            command,
            cwd=PROJECT,
            env=environment,
            stdout=logs,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        for command in (
            [
                sys.executable,
                "-m",
                "dagster_webserver",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                *workspace,
            ],
            [sys.executable, "-m", "dagster._daemon", "run", *workspace],
        )  # fmt: skip
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{url}/server_info"), 120, "the webserver")
        yield url
    finally:
        for process in processes:  # both told at once: each takes seconds to stop cleanly
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            stop_group(process)
        logs.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture
def screenshots(tmp_path) -> Path:
    folder = Path(os.environ.get("SCREENSHOTS_DIR") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1400,900"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(
        service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options
    )
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def graphql(browser, query: str, variables: dict) -> dict:
    """A GraphQL call from the page, as the UI makes it."""
    return browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch('/graphql', {method: 'POST', headers: {'Content-Type': 'application/json'},
                           body: JSON.stringify({query: arguments[0], variables: arguments[1]})})
          .then(r => r.json()).then(done).catch(e => done({error: String(e)}));
        """,
        query,
        variables,
    )


def page_text(browser, url: str) -> str:
    browser.get(url)
    time.sleep(3)
    for skip in browser.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
        skip.click()  # the UI's one-time newsletter dialog
    return browser.find_element(By.TAG_NAME, "body").text


def test_a_failed_partition_is_seen_rerun_and_seen_materialized_in_the_ui(
    env, dagster_ui, browser, screenshots
):
    env.write("good.csv", b"store,amount\n1,2.5\n")
    bad = env.write("unreadable.csv", b"store,amount\n2,3.5\n")
    bad.chmod(0o000)  # the SFTP account may not read it: a permanent failure
    partitions = f"{dagster_ui}/assets/default/files?view=partitions"

    # The daemon's sensor finds both files and launches their runs.
    text = wait_until(
        lambda: (t := page_text(browser, partitions))
        and "Failed (1)" in t and "Materialized (1)" in t and t,
        240,
        "one failed and one materialized partition on the asset's page",
    )  # fmt: skip
    assert "unreadable.csv" in text and "good.csv" in text
    browser.find_element(By.XPATH, "//*[normalize-space()='unreadable.csv']").click()
    time.sleep(2)
    browser.save_screenshot(str(screenshots / "1-partition-failed.png"))
    # The partition's events: the observation with the error of its last attempt.
    browser.find_element(By.XPATH, "//button[contains(., 'View all historical events')]").click()
    time.sleep(2)
    # The dialog lists it last in the page; its row unfolds to show the metadata.
    browser.find_elements(By.XPATH, "//*[normalize-space()='unreadable.csv']")[-1].click()
    time.sleep(1)
    events = browser.find_element(By.TAG_NAME, "body").text
    browser.save_screenshot(str(screenshots / "1b-partition-error.png"))
    assert "Permission denied" in events and "read access" in events, events
    webdriver.ActionChains(browser).send_keys(Keys.ESCAPE).perform()

    bad.chmod(0o644)  # the fix
    launched = graphql(
        browser,
        LAUNCH,
        {
            "executionParams": {
                "selector": {
                    "repositoryLocationName": "sftp_minio_assets",
                    "repositoryName": "__repository__",
                    "pipelineName": "__ASSET_JOB",
                    "assetSelection": [{"path": ["default", "files"]}],
                    "assetCheckSelection": [],
                },
                "mode": "default",
                "executionMetadata": {
                    "tags": [{"key": "dagster/partition", "value": "unreadable.csv"}]
                },
                "runConfigData": "{}",
            }
        },
    )["data"]["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    status = wait_until(
        lambda: (s := graphql(browser, RUN_STATUS, {"id": run_id})["data"]["runOrError"]["status"])
        in ("SUCCESS", "FAILURE", "CANCELED") and s,
        240,
        "the rerun to finish",
    )  # fmt: skip
    assert status == "SUCCESS"

    text = wait_until(
        lambda: (t := page_text(browser, partitions)) and "Materialized (2)" in t and t,
        60,
        "both partitions materialized on the asset's page",
    )
    assert "Failed (0)" in text
    browser.find_element(By.XPATH, "//*[normalize-space()='unreadable.csv']").click()
    time.sleep(2)
    browser.save_screenshot(str(screenshots / "2-partition-rerun-materialized.png"))
    assert env.rows()["unreadable.csv"]["status"] == "COMPLETED"
