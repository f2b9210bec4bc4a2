"""Screenshots of the MLflow UI for the README: the runs table, a run page and the registered model's version.

    python benchmarks/screenshots.py [--store sqlite:///mlflow.db] [--out docs/screenshots] [--run RUN_ID]
                                     [--port 5000 | --url http://127.0.0.1:5000] [--size 1600x1000]

Starts `mlflow ui` on 127.0.0.1 at a free port on the store (default: the repository's embedded store, after
`make run`), drives Debian's headless Chromium over the DevTools protocol (no browser download: aiohttp, which
MLflow itself depends on, speaks the websocket) and writes runs.png, run.png and model.png: the experiment's
runs table, the newest run that finished `evaluate` (or --run) with its description expanded, and the version
that run registered. MLflow 3.17 keeps the runs table's columns and its GenAI / Model training switch in the
browser's localStorage (not in the URL), so the script stores them there and reloads: the table shows the
headline metrics of pipeline/metrics.py (then the params that differ between runs), laid out as wide as they
need and captured at --size; the pages are in the training view. Each page is captured once its content is on
screen (the run's id, the version's heading) and no spinner is left. Take the pictures from synthetic-data
runs only: FER2013 images are never committed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.cli import stop_group  # noqa: E402  (the script runs from a checkout, after the path)

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}  # no calls home from the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_ui(store: str, log: Path, port: int | None = None) -> Iterator[str]:
    """`mlflow ui` on the store at `port` (default: a free one) of 127.0.0.1; yields its URL, then stops the
    whole process group."""
    port = port or free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow) if mlflow.exists() else "mlflow", "ui", "--backend-store-uri", store, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    with log.open("w") as out:
        process = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=os.environ | QUIET)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", process, log)
        yield url
    finally:
        stop_group(process, signal.SIGTERM, timeout=20)


def wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"error: mlflow ui exited ({process.returncode}): {log.read_text()[-800:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.5)
    raise SystemExit(f"error: {url} did not answer within {timeout:.0f} s (log: {log})")


# ---------------------------------------------------------------- what to show
@dataclass
class Targets:
    experiment_id: str
    run_id: str
    run_name: str
    model: str | None
    version: str | None
    metrics: list[str]  # the runs table's metric columns
    params: list[str]  # ... and the params that tell its runs apart
    parents: list[str]  # runs with child runs (a search's trials): shown expanded


def headline_names() -> list[str]:
    """The pipeline's headline metrics, if this checkout defines them (pipeline/metrics.py)."""
    try:
        from pipeline.metrics import HEADLINE_NAMES
    except ImportError:
        return []
    return list(HEADLINE_NAMES)


def pick_targets(store: str, experiment: str, run_id: str | None, metrics: list[str] | None) -> Targets:
    """The experiment, its newest complete pipeline run (or `run_id`), that run's registered version."""
    import mlflow

    client = mlflow.MlflowClient(store)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"error: {store}: no experiment {experiment!r} (run `make run` first)")
    if run_id:
        run = client.get_run(run_id)
    else:
        runs = client.search_runs([exp.experiment_id], "tags.`pipeline.stage.evaluate` = 'done'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            raise SystemExit(f"error: {store}: no run of {experiment!r} has finished the evaluate stage")
        run = runs[0]
    versions = client.search_model_versions(f"run_id = '{run.info.run_id}'")
    version = max(versions, key=lambda v: int(v.version)) if versions else None
    names = metrics or [m for m in headline_names() if m in run.data.metrics] or sorted(run.data.metrics)[:8]
    recent = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=10)
    parents = sorted({p for r in [run, *recent] if (p := r.data.tags.get("mlflow.parentRunId"))})
    return Targets(exp.experiment_id, run.info.run_id, run.info.run_name or run.info.run_id,
                   version.name if version else None, version.version if version else None, names,
                   differing_params([r for r in recent if r.info.run_id not in parents]), parents)


def differing_params(runs: list, most: int = 3) -> list[str]:
    """Params whose values differ between the runs (the "why" beside the metrics), at most `most`."""
    keys = sorted({k for r in runs for k in r.data.params})
    return [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1][:most]


# ---------------------------------------------------------------- Chromium over the DevTools protocol
class Page:
    """One browser tab: `call` a DevTools method, `eval` JavaScript, wait for content, capture a PNG."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.last_id = 0
        self.size = (0, 0)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        await self.ws.send_json({"id": self.last_id, "method": method, "params": params})
        async for message in self.ws:
            reply = json.loads(message.data)
            if reply.get("id") == self.last_id:  # events (no id) are not subscribed to; skip any
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
        raise RuntimeError("the DevTools connection closed")

    async def eval(self, expression: str) -> Any:
        reply = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"javascript failed: {reply['exceptionDetails'].get('text')}: {expression[:80]}")
        return reply["result"].get("value")

    async def goto(self, url: str, ready: str, timeout: float = 180.0, settle: float = 2.0) -> None:
        """Navigate, then wait until the JavaScript expression `ready` holds and the page stops spinning."""
        await self.call("Page.navigate", url="about:blank")  # a fresh document: the app re-reads its state
        await self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.eval(f"document.readyState === 'complete' && !!({ready}) && !({SPINNING})"):
                await asyncio.sleep(settle)  # charts and fonts finish drawing
                return
            await asyncio.sleep(0.5)
        text = (await self.eval("document.body ? document.body.innerText : ''") or "")[:300].replace("\n", " | ")
        raise SystemExit(f"error: {url}: content not shown within {timeout:.0f} s; page text: {text}")

    async def resize(self, width: int, height: int) -> None:
        await self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                        mobile=False)
        self.size = (width, height)

    async def click_text(self, text: str) -> None:
        """Click the first button or link that reads `text`, if there is one (e.g. "Show more")."""
        await self.eval(f"""(() => {{ const el = [...document.querySelectorAll('button, a, [role=button]')]
            .find(e => e.innerText.trim() === {json.dumps(text)}); if (el) el.click(); }})()""")
        await asyncio.sleep(1.0)

    async def rows_bottom(self) -> int:
        """Where the last table row ends (CSS px): below it a short table leaves only white space."""
        return int(await self.eval("Math.max(0, ...[...document.querySelectorAll('[role=row]')]"
                                   ".map(r => r.getBoundingClientRect().bottom))") or 0)

    async def screenshot(self, path: Path, scale: float = 1.0, height: int | None = None) -> None:
        """A PNG of the viewport's top `height` px, scaled by `scale` (a wide layout at the usual size)."""
        width, full = self.size
        clip = {"x": 0, "y": 0, "width": width, "height": min(height or full, full), "scale": scale}
        shot = await self.call("Page.captureScreenshot", format="png", clip=clip)
        path.write_bytes(base64.b64decode(shot["data"]))
        print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


SPINNING = "document.querySelector('[role=progressbar], [data-testid*=spinner i], .anticon-loading')"


@contextlib.asynccontextmanager
async def chromium(binary: str, width: int, height: int) -> AsyncIterator[Page]:
    import aiohttp

    profile = Path(tempfile.mkdtemp(prefix="screenshots-chromium-"))
    process = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                f"--window-size={width},{height}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        port = await devtools_port(profile, process)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
            page_ws = next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
            async with session.ws_connect(page_ws, max_msg_size=0) as ws:
                page = Page(ws)
                await page.resize(width, height)
                yield page
    finally:
        stop_group(process, signal.SIGTERM, timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


async def devtools_port(profile: Path, process: subprocess.Popen, timeout: float = 30.0) -> int:
    """Chromium writes the port it chose (--remote-debugging-port=0) into DevToolsActivePort."""
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"error: chromium exited ({process.returncode}) before opening its DevTools port")
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(marker.read_text().splitlines()[0])
        await asyncio.sleep(0.2)
    raise SystemExit("error: chromium opened no DevTools port within 30 s")


# ---------------------------------------------------------------- the three pictures
STATE_KEY = "MLflowLocalStorage-1.1-ExperimentPage-{}-ReactComponentState"  # MLflow 3.17's LocalStorageUtils
BROWSER_SETTINGS = {
    "mlflow.workflowType_v1": '"machine_learning"',  # the sidebar's GenAI / Model training switch: training
    "mlflow.assistant.panelOpen_v1": "false",  # the assistant's chat panel, else opened on a first visit
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
}


def column(kind: str, name: str) -> str:
    return f"{kind}.`{name}`"


FIXED_COLUMNS_PX = 800  # the sidebar, margins, checkbox, run name, created and duration columns


def header_width(name: str) -> int:
    """A column wide enough for its header in the table's 13 px font (the values get the same room)."""
    return max(96, round(6.8 * len(name)) + 28)


async def select_columns(page: Page, experiment_id: str, columns: dict[str, int], expanded: list[str]) -> None:
    """Store the runs table's UI state with `columns` (id -> width) selected in this order, as its "Columns"
    menu would, the `expanded` parent runs open, and the browser-side settings. The page keeps them in
    localStorage: the next load shows them."""
    key = STATE_KEY.format(json.dumps([experiment_id]))
    script = f"""(() => {{
      const key = {json.dumps(key)}, widths = {json.dumps(columns)}, settings = {json.dumps(BROWSER_SETTINGS)};
      const state = JSON.parse(localStorage.getItem(key) || '{{}}');
      state.selectedColumns = Object.keys(widths);
      state.columnOrder = Object.keys(widths);
      state.columnWidths = widths;
      state.runsExpanded = Object.fromEntries({json.dumps(expanded)}.map(id => [id, true]));
      localStorage.setItem(key, JSON.stringify(state));
      for (const [k, v] of Object.entries(settings)) localStorage.setItem(k, v);
    }})()"""
    await page.eval(script)


async def take(base: str, targets: Targets, out: Path, binary: str, width: int, height: int) -> None:
    exp = targets.experiment_id
    runs_url = f"{base}/#/experiments/{exp}/runs?workflowType=machine_learning"
    name = json.dumps(targets.run_name)
    async with chromium(binary, width, height) as page:
        # first visit: the page stores its default UI state; then the columns are chosen and it is reloaded
        await page.goto(runs_url, "document.body.innerText.includes('matching run')", settle=0.5)
        columns = {column(kind, name): header_width(name) for kind, names in
                   (("metrics", targets.metrics), ("params", targets.params)) for name in names}
        await select_columns(page, exp, columns, targets.parents)
        # every selected column on screen: lay the table out as wide as it needs, captured at the usual size
        layout = min(max(width, FIXED_COLUMNS_PX + sum(columns.values())), 2 * width)
        await page.resize(layout, round(height * layout / width))  # the same shape, scaled
        header = json.dumps(targets.metrics[-1]) if targets.metrics else name
        await page.goto(runs_url, f"document.body.innerText.includes({name}) && "
                                  f"document.body.innerText.includes({header})")
        tall = round(height * layout / width)
        await page.screenshot(out / "runs.png", scale=width / layout,
                              height=max(await page.rows_bottom() + 160, tall // 2))
        await page.resize(width, height)
        await page.goto(f"{base}/#/experiments/{exp}/runs/{targets.run_id}",
                        f"document.body.innerText.includes({json.dumps(targets.run_id)})")
        await page.click_text("Show more")  # the whole description: the headline table
        await page.screenshot(out / "run.png")
        if targets.model:
            await page.goto(f"{base}/#/models/{targets.model}/versions/{targets.version}",
                            f"document.body.innerText.includes('Version {targets.version}')")
            await page.screenshot(out / "model.png")
        else:
            print(f"no registered version of run {targets.run_id}: model.png not taken")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=f"sqlite:///{REPO / 'mlflow.db'}", help="MLflow backend store URI")
    parser.add_argument("--url", help="an MLflow UI already running (e.g. http://127.0.0.1:5000): not started here")
    parser.add_argument("--port", type=int, help="the port of the UI started here (default: a free one)")
    parser.add_argument("--experiment", default="fer-expression")
    parser.add_argument("--run", help="run id to show (default: the newest run that finished evaluate)")
    parser.add_argument("--metrics", help="comma-separated metric columns (default: the headline metrics)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--size", default="1600x1000", help="window size WIDTHxHEIGHT")
    args = parser.parse_args()
    if not Path(args.chromium).exists():
        raise SystemExit(f"error: {args.chromium}: no Chromium (Debian: apt-get install -y chromium)")
    width, height = (int(v) for v in args.size.lower().split("x"))
    targets = pick_targets(args.url or args.store, args.experiment, args.run,
                           args.metrics.split(",") if args.metrics else None)
    print(f"run {targets.run_name} ({targets.run_id}), version {targets.model} {targets.version}; "
          f"columns: {', '.join(targets.metrics + targets.params)}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.url:
        asyncio.run(take(args.url.rstrip("/"), targets, args.out, args.chromium, width, height))
        return
    with tempfile.TemporaryDirectory() as tmp, mlflow_ui(args.store, Path(tmp) / "mlflow-ui.log", args.port) as base:
        asyncio.run(take(base, targets, args.out, args.chromium, width, height))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit("interrupted") from None
