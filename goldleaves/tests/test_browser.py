"""Real-browser tests: Debian's Chromium, headless, driven by Selenium through the system
chromedriver (no downloaded browser build), against a live server that serves the
project's static files (pytest-django's ``live_server`` uses Django's
``StaticFilesHandler``).

The browser resolves no host but localhost (``--host-resolver-rules``) and every request
it made is read back from its performance log and asserted to be to the live server, so
the pages are shown to work offline. Screenshots go to ``test-artifacts/`` (gitignored).
Install the browser with ``sh scripts/ci_browser.sh`` (``.ci/run`` does).
"""

import base64
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import pytest
from django.conf import settings
from django.utils import timezone

from billing import selectors
from billing.tests.factories import BillingEventFactory
from cases.tests.factories import CaseFactory
from tenancy.context import tenant_context
from tenancy.testing import access_token
from tenancy.tests.factories import PASSWORD, OrganizationFactory, UserFactory, member_of

pytestmark = [pytest.mark.browser, pytest.mark.live]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"
WAIT_SECONDS = 30


@pytest.fixture
def browser():
    """A headless Chromium (1366 x 900) that resolves localhost only, with a performance
    log of every network request."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1366,900",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT_SECONDS)
    ARTIFACTS.mkdir(exist_ok=True)
    yield driver
    driver.quit()


def wait_for(driver, css: str, *, count: int = 1):
    """The elements matching ``css`` once at least ``count`` are visible."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def found(d):
        elements = [e for e in d.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()]
        return elements if len(elements) >= count else False

    return WebDriverWait(driver, WAIT_SECONDS).until(found, f"no {count} visible {css!r}")


def full_page_screenshot(driver, name: str) -> None:
    """Save ``test-artifacts/<name>``: the whole page, 1366 px wide (DevTools protocol's
    ``Page.captureScreenshot`` beyond the viewport)."""
    width, height = driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
    )
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    (ARTIFACTS / name).write_bytes(base64.b64decode(shot["data"]))


def requested_urls(driver) -> list[str]:
    """Every URL the browser requested since the last call (its performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def assert_only_local(urls: list[str], live_url: str) -> None:
    host = urlparse(live_url).netloc
    foreign = [
        u for u in urls if not u.startswith(("data:", "blob:")) and urlparse(u).netloc != host
    ]
    assert not foreign, f"requests beyond the live server: {foreign}"


def test_api_docs_render_offline_authorize_and_run_get_cases(
    browser, live_server, transactional_db
):
    from selenium.webdriver.common.by import By

    organization = OrganizationFactory(name="Browser Law")
    owner = member_of(organization, email="owner@browser-law.test")
    CaseFactory(organization=organization, title="Roe v. Browser")

    browser.get(f"{live_server.url}/api/docs/")
    operations = wait_for(browser, ".opblock", count=28)
    tags = [e.text.split("\n")[0] for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-tag")]
    assert {"Auth", "Organizations", "Clients", "Cases", "Documents", "Billing"} <= set(tags)
    static = [u for u in requested_urls(browser) if "/static/" in u]
    assert any(u.endswith("/swagger-ui-bundle.js") for u in static), static
    assert len(operations) >= 28
    browser.save_screenshot(str(ARTIFACTS / "api-docs.png"))

    # Authorize with a JWT, then GET /api/v1/cases/ through "Try it out" / "Execute".
    browser.find_element(By.CSS_SELECTOR, "button.authorize").click()
    field = wait_for(browser, ".auth-container input")[0]
    field.send_keys(str(access_token(owner)))
    browser.find_element(By.CSS_SELECTOR, ".auth-btn-wrapper button.authorize").click()
    wait_for(browser, ".auth-btn-wrapper button.btn-done")[0].click()
    operation = browser.find_element(By.ID, "operations-Cases-v1_cases_list")
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait_for(browser, "#operations-Cases-v1_cases_list .try-out__btn")[0].click()
    wait_for(browser, "#operations-Cases-v1_cases_list button.execute")[0].click()
    status = wait_for(
        browser, "#operations-Cases-v1_cases_list .live-responses-table tbody .response-col_status"
    )[0]
    body = wait_for(
        browser,
        "#operations-Cases-v1_cases_list .live-responses-table tbody .response-col_description pre",
    )[0]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", status)
    browser.save_screenshot(str(ARTIFACTS / "api-docs-get-cases.png"))
    assert status.text.strip().startswith("200")
    assert "Roe v. Browser" in body.text
    urls = requested_urls(browser)
    assert any(u.endswith("/api/v1/cases/") for u in urls), urls
    assert_only_local(static + urls, live_server.url)


def test_staff_see_the_usage_dashboard_chart(browser, live_server, transactional_db):
    from selenium.webdriver.common.by import By

    month = selectors.month_start(selectors.month_start(timezone.now().date()) - timedelta(days=1))
    firms = [OrganizationFactory(name="Alpha Law"), OrganizationFactory(name="Beta Legal")]
    seeded = {(firms[0], 3): 3, (firms[0], 10): 1, (firms[1], 10): 2, (firms[1], 21): 5}
    for (firm, day), count in seeded.items():
        with tenant_context(firm):
            BillingEventFactory.create_batch(
                count,
                organization=firm,
                unit_cost_cents=12345,
                created_at=datetime(month.year, month.month, day, 15, tzinfo=UTC),
                dimensions={"route": "/api/v1/cases/"},
            )
    UserFactory(email="staff@goldleaves.test", is_staff=True, is_superuser=True)

    browser.get(f"{live_server.url}/admin/login/?next=/admin/usage/%3Fmonth%3D{month:%Y-%m}")
    browser.find_element(By.ID, "id_username").send_keys("staff@goldleaves.test")
    browser.find_element(By.ID, "id_password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    chart = wait_for(browser, "svg.usage-chart-svg")[0]
    full_page_screenshot(browser, "usage-dashboard.png")
    days = (selectors.next_month(month) - month).days
    bars = chart.find_elements(By.CSS_SELECTOR, "rect.bar")
    assert len(bars) == days == int(chart.get_attribute("data-points"))
    filled = [b for b in bars if "empty" not in b.get_attribute("class")]
    assert [b.get_attribute("data-day")[-2:] for b in filled] == ["03", "10", "21"]
    assert [int(b.get_attribute("data-count")) for b in filled] == [3, 3, 5]
    assert all(float(b.get_attribute("height")) > 0 for b in filled)
    total = browser.find_element(By.CSS_SELECTOR, "#usage-total .value").text
    assert total == "$1,357.95"  # 11 events x $123.45
    rows = browser.find_elements(By.CSS_SELECTOR, "#usage-organizations tbody tr")
    assert [r.find_element(By.TAG_NAME, "td").text for r in rows] == ["Beta Legal", "Alpha Law"]
    # The page fits 1366 px; so does the billing events list.
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 1366
    # One firm's chart, beside the all-organizations one.
    rows[1].find_element(By.LINK_TEXT, "daily chart").click()
    charts = wait_for(browser, "svg.usage-chart-svg", count=2)
    assert [c.get_attribute("data-days-with-usage") for c in charts] == ["3", "2"]
    assert charts[1].get_attribute("aria-label") == f"Alpha Law, {month:%B %Y}"
    full_page_screenshot(browser, "usage-dashboard-alpha-law.png")
    # The organization list's "usage this period" column (this month: nothing yet).
    browser.get(f"{live_server.url}/admin/tenancy/organization/")
    cells = wait_for(browser, "#result_list td.field-usage_this_period", count=2)
    assert [c.text for c in cells] == ["$0.00", "$0.00"]
    browser.get(f"{live_server.url}/admin/billing/billingevent/")
    wait_for(browser, "#result_list")
    browser.save_screenshot(str(ARTIFACTS / "billing-events-1366.png"))
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 1366
    assert_only_local(requested_urls(browser), live_server.url)
