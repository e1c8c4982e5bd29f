"""The dashboard as a person uses it: Debian's headless Chromium (packages `chromium` and
`chromium-driver`, installed by .ci/run; nothing is downloaded here) logs in through the form,
reads a failed job's error and a running job's progress, and clicks cancel and retry; the jobs
table shows what the clicks did."""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Iterator

import pytest
from flask import Flask
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait
from werkzeug.serving import make_server

from api.dashboard.auth import COOKIE_NAME

from .test_dashboard import FAILURE_TEXT, job_state, make_platform_admin, seed_jobs

WAIT_SECONDS = 20


@pytest.fixture
def served(app: Flask) -> Iterator[str]:
    """The test app on a loopback port. One request at a time, so the browser's requests and the
    test's own database reads (one connection, inside the test's transaction) never overlap."""
    server = make_server("127.0.0.1", 0, app, threaded=False)
    thread = threading.Thread(target=server.serve_forever, name="dashboard-server", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail("needs Debian's chromium and chromium-driver packages (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    chrome.set_page_load_timeout(WAIT_SECONDS)
    try:
        yield chrome
    finally:
        chrome.quit()


def wait_for_notice(chrome: webdriver.Chrome, text: str) -> None:
    """Polls until the notice reads `text`. While a click's POST-redirect-GET replaces the page,
    reading the old page's notice can fail with Chromium's "node does not belong to the document"
    (a generic WebDriverException, not a stale-element one): keep polling through it."""
    wait = WebDriverWait(chrome, WAIT_SECONDS, ignored_exceptions=(WebDriverException,))
    wait.until(ec.text_to_be_present_in_element((By.ID, "notice"), text))


def row(chrome: webdriver.Chrome, job_id: uuid.UUID):
    return chrome.find_element(By.ID, f"job-{job_id}")


def test_operator_logs_in_reads_the_jobs_and_uses_the_buttons(served, browser, app, acme, globex, session_factory,
                                                              broker):
    ops = make_platform_admin(session_factory, app)
    seeded = seed_jobs(session_factory, acme, globex)

    browser.get(f"{served}/admin")
    WebDriverWait(browser, WAIT_SECONDS).until(ec.url_to_be(f"{served}/admin/login"))
    browser.find_element(By.ID, "api_key").send_keys(acme.api_key)  # not a platform admin
    browser.find_element(By.ID, "login").click()
    WebDriverWait(browser, WAIT_SECONDS).until(ec.text_to_be_present_in_element((By.ID, "problem"), "no such page"))
    assert browser.get_cookie(COOKIE_NAME) is None

    browser.get(f"{served}/admin/login")
    browser.find_element(By.ID, "api_key").send_keys(ops.api_key)
    browser.find_element(By.ID, "login").click()
    WebDriverWait(browser, WAIT_SECONDS).until(ec.presence_of_element_located((By.ID, "running")))
    cookie = browser.get_cookie(COOKIE_NAME)
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/admin"
    assert COOKIE_NAME not in browser.execute_script("return document.cookie")  # out of scripts' reach

    # What a person sees: the failure with its error, the training with its progress and heartbeat.
    failure = row(browser, seeded.failed)
    assert failure.find_element(By.CSS_SELECTOR, "td.error").text == FAILURE_TEXT
    running = row(browser, seeded.running)
    assert running.find_element(By.CSS_SELECTOR, "td.progress").text == "42%"
    # seeded 5 s before the fixture finished; the page is read within a minute of it, even on a busy machine
    age, unit = running.find_element(By.CSS_SELECTOR, "td.heartbeat").text.split()
    assert unit == "s" and 5 <= int(age) <= 60, age
    assert "globex" in running.text
    assert browser.find_element(By.CSS_SELECTOR, "#queue-render td.queued").text == "1"
    assert browser.find_element(By.ID, "usage").text == "no usage recorded"

    # Cancel the running training: it is asked to stop at its next step.
    row(browser, seeded.running).find_element(By.CSS_SELECTOR, "button.cancel").click()
    wait_for_notice(browser, f"Job {seeded.running} will stop at its next step.")
    assert job_state(session_factory, seeded.running) == ("running", 1, True, None)
    assert browser.find_elements(By.CSS_SELECTOR, f"#job-{seeded.running} button.cancel") == []

    # Retry the failed render: back on its queue with fresh attempts, published to the broker.
    row(browser, seeded.failed).find_element(By.CSS_SELECTOR, "button.retry").click()
    wait_for_notice(browser, f"Retry queued as job {seeded.failed}.")
    assert job_state(session_factory, seeded.failed) == ("queued", 0, False, None)
    assert broker.take("render") == [("workers.render", [str(seeded.failed)])]
    assert browser.find_elements(By.ID, f"job-{seeded.failed}") == []  # no longer among the failures

    # The jobs page, filtered to what is queued now: the retried job and the one that was waiting.
    browser.find_element(By.LINK_TEXT, "Jobs").click()
    WebDriverWait(browser, WAIT_SECONDS).until(ec.presence_of_element_located((By.ID, "filters")))
    Select(browser.find_element(By.ID, "filter-state")).select_by_value("queued")
    browser.find_element(By.ID, "apply-filters").click()
    WebDriverWait(browser, WAIT_SECONDS).until(ec.url_contains("state=queued"))
    shown = {r.get_attribute("id") for r in browser.find_elements(By.CSS_SELECTOR, "#jobs tr[id^=job-]")}
    assert shown == {f"job-{seeded.failed}", f"job-{seeded.queued}"}
    assert row(browser, seeded.failed).find_element(By.CSS_SELECTOR, "td.state").text == "queued"

    # Cancel the waiting one from the filtered list: canceled at once, and the list keeps its filter.
    row(browser, seeded.queued).find_element(By.CSS_SELECTOR, "button.cancel").click()
    wait_for_notice(browser, f"Job {seeded.queued} canceled.")
    assert job_state(session_factory, seeded.queued)[0] == "canceled"
    assert "state=queued" in browser.current_url
    assert browser.find_elements(By.ID, f"job-{seeded.queued}") == []

    browser.find_element(By.ID, "logout").click()
    WebDriverWait(browser, WAIT_SECONDS).until(ec.url_to_be(f"{served}/admin/login"))
    assert browser.get_cookie(COOKIE_NAME) is None
