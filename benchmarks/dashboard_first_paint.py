"""How fast a notebook opens as a dashboard once the server runs: Voila's first paint, and the
moment its widgets work, against JupyterLab opening the same notebook (the baseline), in the
same run, interleaved.

Run after ``deploy/install.sh --dev`` (Debian's Chromium, Playwright)::

    /opt/werkbank/venv/bin/python benchmarks/dashboard_first_paint.py             # 8 rounds
    /opt/werkbank/venv/bin/python benchmarks/dashboard_first_paint.py --rounds 3

One ``jupyter server`` with werkbank's environment (Voila's server extension, werkbank's) on a
free port, a notebook of the kind a consultant shows (a heading, a table, a plot, a slider),
and three ways to open it: Voila (``/voila/render/...``), Voila with progressive rendering
(cells appear as they finish), and JupyterLab (``/lab/tree/...``, until the notebook's first
cell shows). Each opening starts a fresh page (no cache). Figures: the browser's first
contentful paint, and until the slider (Voila) or the first cell (JupyterLab) is visible;
median and p95 and the ratio to JupyterLab. The README's target (issue 15): first paint of a
simple dashboard <= 3 s on this machine's 2 cores. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the harness the tests use
from playwright.sync_api import sync_playwright

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.mlflow_server import free_port
from tests.services import answers

VENV_BIN = Path(sys.executable).parent

CELLS = [
    "import pandas as pd\nimport matplotlib\nmatplotlib.use('agg')\nimport matplotlib.pyplot as plt\n"
    "import ipywidgets as widgets",
    "runs = pd.DataFrame({'run': [f'run-{i}' for i in range(8)],\n"
    "                     'accuracy': [0.80 + i / 100 for i in range(8)]})\n"
    "runs.sort_values('accuracy', ascending=False)",
    "fig, ax = plt.subplots(figsize=(5, 3))\nax.plot(runs['accuracy'])\n"
    "ax.set_title('accuracy by run')\nplt.show()",
    "widgets.IntSlider(value=3, min=1, max=8, description='top n')",
]


def write_notebook(folder: Path) -> str:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# Project overview\n\nWhat the last runs achieved.")]
    nb.cells += [nbformat.v4.new_code_cell(source) for source in CELLS]
    (folder / "overview.ipynb").write_text(nbformat.writes(nb))
    return "overview.ipynb"


def start_server(folder: Path, port: int, token: str, progressive: bool) -> subprocess.Popen:
    argv = [
        str(VENV_BIN / "jupyter"),
        "server",
        "--no-browser",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--ServerApp.root_dir={folder}",
        f"--IdentityProvider.token={token}",
        "--allow-root",
        f"--VoilaConfiguration.progressive_rendering={progressive}",
    ]
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
    log = open(folder / f"server-{port}.log", "w")  # closed with the process
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder)
    deadline = time.monotonic() + 90
    while not answers(f"http://127.0.0.1:{port}/api/status?token={token}"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(
                f"jupyter server did not start: {(folder / f'server-{port}.log').read_text()[-2000:]}"
            )
        time.sleep(0.5)
    return process


def first_paint(page) -> float:
    entries = page.evaluate("JSON.stringify(performance.getEntriesByName('first-contentful-paint'))")
    found = json.loads(entries)
    return found[0]["startTime"] / 1000 if found else float("nan")


def open_once(browser, url: str, ready: str) -> tuple[float, float]:
    context = browser.new_context()
    page = context.new_page()
    started = time.monotonic()
    page.goto(url, wait_until="commit")
    page.locator(ready).first.wait_for(state="visible", timeout=120_000)
    usable = time.monotonic() - started
    paint = first_paint(page)
    # Voila shuts its kernel down when the page goes; give it the chance before the next round.
    page.close()
    context.close()
    return paint, usable


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"median {statistics.median(values):5.2f} s  p95 {p95:5.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="werkbank-dashboard-bench-") as tmp:
        folder = Path(tmp)
        notebook = write_notebook(folder)
        ports = {"plain": free_port(), "progressive": free_port()}
        servers = [
            start_server(folder, ports["plain"], token, progressive=False),
            start_server(folder, ports["progressive"], token, progressive=True),
        ]
        ways = {
            "Voila": (
                f"http://127.0.0.1:{ports['plain']}/voila/render/{notebook}?token={token}",
                ".widget-slider",
            ),
            "Voila, progressive": (
                f"http://127.0.0.1:{ports['progressive']}/voila/render/{notebook}?token={token}",
                ".widget-slider",
            ),
            "JupyterLab (baseline)": (
                f"http://127.0.0.1:{ports['plain']}/lab/tree/{notebook}?token={token}",
                ".jp-Notebook .jp-Cell",
            ),
        }
        paints: dict[str, list[float]] = {name: [] for name in ways}
        usable: dict[str, list[float]] = {name: [] for name in ways}
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                for url, ready in ways.values():  # one warm-up each: imports, caches on disk
                    open_once(browser, url, ready)
                for round_ in range(args.rounds):
                    for name, (url, ready) in ways.items():
                        paint, ready_s = open_once(browser, url, ready)
                        paints[name].append(paint)
                        usable[name].append(ready_s)
                    print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
                browser.close()
        finally:
            for server in servers:
                server.terminate()
                server.wait(30)
    baseline = statistics.median(usable["JupyterLab (baseline)"])
    print(
        f"\nA simple dashboard, opened {args.rounds} times each, server running (Debian Chromium, headless):"
    )
    for name in ways:
        ratio = statistics.median(usable[name]) / baseline
        print(
            f"  {name:22s} first paint {summary(paints[name])}  usable {summary(usable[name])}  x{ratio:.2f}"
        )
    print("  (usable: Voila's slider visible; JupyterLab: the notebook's first cell visible)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
