"""Screenshots of the real MLflow UI for docs/ (not part of the tests): the runs table of an
experiment with its Dataset column, a parent run's page with its description, and the chart view
comparing the fine-tunes grouped by method (pretrained against scratch).

    apt-get install chromium chromium-driver && .venv/bin/pip install selenium
    .venv/bin/python docs/ui_screenshots.py --experiment label-ablation [--store sqlite:///mlruns/mlflow.db]

It starts `mlflow ui` on the store (a free local port), drives headless Chromium with Selenium and
writes docs/ui-runs-table.png, docs/ui-run-description.png and docs/ui-pretrained-vs-scratch.png.
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

DOCS = Path(__file__).resolve().parent
WAIT_S = 8  # the UI is a single-page app: give it time to fetch and draw


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(store: str, port: int) -> subprocess.Popen:
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store, "--host", "127.0.0.1",
                           "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return ui
        except OSError:
            time.sleep(1)
    ui.kill()
    raise SystemExit(f"mlflow ui on port {port} did not answer within 90 s")


def browser():
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1700,1000"):
        options.add_argument(arg)
    options.binary_location = "/usr/bin/chromium"
    return webdriver.Chrome(options=options, service=webdriver.ChromeService("/usr/bin/chromedriver"))


def click_all(driver, selector: str, limit: int = 50) -> int:
    from selenium.webdriver.common.by import By

    clicked = 0
    for element in driver.find_elements(By.CSS_SELECTOR, selector)[:limit]:
        try:
            element.click()
            clicked += 1
            time.sleep(0.4)
        except Exception:  # noqa: BLE001 - covered or gone: the screenshot shows what is there
            pass
    return clicked


def open_page(driver, url: str) -> None:
    driver.get(url)
    time.sleep(WAIT_S)
    click_all(driver, "[data-component-id='mlflow.assistant.chat_panel.close']")  # the side panel hides columns


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="label-ablation")
    parser.add_argument("--store", default=f"sqlite:///{DOCS.parent / 'mlruns' / 'mlflow.db'}")
    parser.add_argument("--out", default=str(DOCS))
    args = parser.parse_args()
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By

    client = MlflowClient(args.store)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"no experiment {args.experiment!r} in {args.store}: run `layerwise run {args.experiment}` first")
    parent = next(r for r in client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
                  if "mlflow.parentRunId" not in r.data.tags)  # the latest parent run
    out = Path(args.out)
    port = free_port()
    ui = start_ui(args.store, port)
    driver = browser()
    base = f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}"
    try:
        open_page(driver, f"{base}/runs")
        click_all(driver, "button[data-component-id*='runnamecellrenderer']", limit=1)  # expand the parent
        time.sleep(2)
        driver.save_screenshot(str(out / "ui-runs-table.png"))

        open_page(driver, f"{base}/runs/{parent.info.run_id}")
        driver.save_screenshot(str(out / "ui-run-description.png"))

        cells = urllib.parse.quote("tags.`layerwise.stage` = 'finetune'")
        open_page(driver, f"{base}/runs?compareRunsMode=CHART&searchFilter={cells}")
        driver.find_element(By.CSS_SELECTOR, "[data-component-id*='experimentviewrunsgroupbyselector']").click()
        time.sleep(1)
        for option in driver.find_elements(By.CSS_SELECTOR, "[data-component-id*='experimentviewrunsgroupbyselector']"):
            if option.text.strip() == "layerwise.method":
                option.click()
                break
        time.sleep(2)
        driver.find_element(By.TAG_NAME, "body").click()  # close the menu
        search = driver.find_element(By.CSS_SELECTOR, "input[data-component-id*='runschartsfilterinput']")
        search.send_keys("test_accuracy")  # the cells' metric alone (the parent has mean_test_error/... charts)
        time.sleep(4)
        driver.save_screenshot(str(out / "ui-pretrained-vs-scratch.png"))
    finally:
        driver.quit()
        ui.terminate()
    print(f"wrote {out / 'ui-runs-table.png'}, {out / 'ui-run-description.png'}, {out / 'ui-pretrained-vs-scratch.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
