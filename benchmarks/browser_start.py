"""What a user waits for in the browser: the click on *Start* until JupyterLab's launcher shows.

Run as root on the machine with the single-node Slurm cluster, after ``deploy/install.sh --dev``
(Debian's Chromium, Playwright)::

    /opt/werkbank/venv/bin/python benchmarks/browser_start.py            # 10 starts per hub
    /opt/werkbank/venv/bin/python benchmarks/browser_start.py --rounds 3

Two hubs side by side in the same run, on ports 28400 and 28500 (hub API at +81), interleaved:
werkbank's Slurm spawner with the CPU profile, and its local-process fallback (a process on this
machine, no scheduler: the baseline). Each round logs in once, opens the spawn page, clicks
*Start* and waits until ``.jp-Launcher`` is visible, then stops the server through the REST API
and waits until the job is gone. Prints median and p95 per hub and their ratio. The README's
target (issue 13): median <= 5 s for the CPU profile on this machine's 2 cores. Nothing here
asserts a time. Shares the cluster with the tests: run it under ``flock /tmp/werkbank-cluster.lock``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the harness the tests use
from playwright.sync_api import expect, sync_playwright

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.cluster import TEST_USERS, make_hub, run, start_slurm, wait_for

PORTS = {"werkbank": 28400, "local": 28500}
SPAWNERS = {"werkbank": "slurm", "local": "local"}
USER = TEST_USERS[1]


def one_start(page, hub, variant: str) -> float:
    page.goto(f"{hub.url}/hub/spawn")
    if variant == "werkbank":
        page.check("input[name=profile][value=cpu]")
    started = time.monotonic()
    page.click("form#spawn_form [type=submit]")
    expect(page.locator(".jp-Launcher")).to_be_visible(timeout=180_000)
    seconds = time.monotonic() - started
    job_id = hub.job_id(USER) if variant == "werkbank" else ""
    hub.stop_server(USER, timeout=90)
    if job_id:
        gone = ("", "COMPLETING")
        wait_for(
            lambda: run("squeue", "-h", "-j", job_id, "-o", "%T", check=False).stdout.strip() in gone,
            60,
            "job end",
        )
    return seconds


def login(page, hub, password: str) -> None:
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", USER)
    page.fill("#password_input", password)
    page.click("#login_submit")
    page.wait_for_url(f"{hub.url}/hub/**")


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]
    return f"median {statistics.median(times):.2f} s, p95 {p95:.2f} s, min {ordered[0]:.2f} s, n={len(times)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    start_slurm()
    import yaml

    password = yaml.safe_load((Path(__file__).resolve().parents[1] / "hub_config" / "site.yaml").read_text())
    password = password["auth"]["shared_password"]
    hubs = {}
    try:
        for variant, port in PORTS.items():
            workdir = Path(tempfile.mkdtemp(prefix=f"werkbank-bench-{variant}-"))
            hubs[variant] = make_hub(
                workdir, port=port, api_port=port + 81, spawner=SPAWNERS[variant], mlflow=False
            )
            hubs[variant].start()
        times = {variant: [] for variant in hubs}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            pages = {}
            for variant, hub in hubs.items():
                pages[variant] = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
                login(pages[variant], hub, password)
            for round_ in range(1, args.rounds + 1):
                for variant, hub in hubs.items():
                    seconds = one_start(pages[variant], hub, variant)
                    times[variant].append(seconds)
                    print(f"  round {round_:2d} {variant:<9} {seconds:5.2f} s", flush=True)
            browser.close()
    finally:
        for hub in hubs.values():
            hub.api("DELETE", f"/users/{USER}/server")
            hub.stop()
    print("\nStart -> JupyterLab launcher visible (Debian Chromium, headless):")
    for variant, measured in times.items():
        print(f"  {variant:<9} {summary(measured)}")
    ratio = statistics.median(times["werkbank"]) / statistics.median(times["local"])
    print(f"  werkbank (Slurm, CPU profile) / local process, medians: {ratio:.2f}x")
    met = statistics.median(times["werkbank"]) <= 5
    print(f"  target: werkbank median <= 5 s: {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
