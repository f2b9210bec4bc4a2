"""Shared fixtures: a real `mlflow server` on 127.0.0.1 and one real `dvc repro` of the tiny preset.

The repro runs once per session in a temporary copy of the working tree (its own git repo), against the
server, and every integration test reads from it: the suite pays for one pipeline run, not one per test.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from omegaconf import OmegaConf

from pipeline.config import CONF_DIR, Params, compose, parse_params

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# `make test` runs two workers (pytest-xdist). Each takes whole modules, so a module's fixtures are built once;
# the modules whose tests read the session's real `dvc repro` (the `repro` fixture) go to one worker together, so
# that run is paid for once. (xdist's own `--dist loadgroup` marks are ignored under pytest 9: nodeids are fixed.)
REPRO_MODULES = ("tests/test_pipeline.py", "tests/test_lineage.py")


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: without it installed, tests run one by one
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::")[0]
            return "the dvc repro modules" if module in REPRO_MODULES else module

    return ByModule(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test on the shared `dvc repro` outside REPRO_MODULES would repeat that run on the other worker: refused."""
    stray = [i.nodeid for i in items if "repro" in getattr(i, "fixturenames", ()) and
             i.nodeid.split("::")[0] not in REPRO_MODULES]
    if stray:
        raise pytest.UsageError(f"{stray[0]} uses the `repro` fixture: move it into one of {', '.join(REPRO_MODULES)}"
                                " (tests/conftest.py: they share one xdist worker and one pipeline run)")


def load_benchmark(name: str) -> ModuleType:
    """A script of benchmarks/ as a module (the folder is not a package), to test its functions in-process."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses (and pickling) look their module up there
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 90.0, process: subprocess.Popen | None = None) -> None:
    """Until `url` answers 200; TimeoutError after `timeout`, or as soon as `process` (the server) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (process is None or process.poll() is None):
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


def realtime(*overrides: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """`fer-realtime` as a user starts it: a subprocess outside any project (no store, no DVC root, no screen)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "DISPLAY"))}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "pipeline.inference.realtime", *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def postgres_bin() -> Path | None:
    """The folder of `initdb` and `pg_ctl`: on PATH, else Debian's /usr/lib/postgresql/<version>/bin (newest)."""
    if found := shutil.which("initdb"):
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return versions[-1].parent if versions else None


@dataclass
class Server:
    uri: str
    process: subprocess.Popen
    root: Path

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal the server's whole process group: `mlflow server` serves from worker children."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        self.process.wait(timeout=30)


def start_mlflow_server(root: Path, backend_store_uri: str | None = None, artifacts: Path | None = None) -> Server:
    """`mlflow server` on 127.0.0.1 serving artifacts itself; its store is `root`/mlflow.db unless given."""
    port = free_port()
    log = (root / "server.log").open("w")
    process = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(artifacts or root / "art"), "--serve-artifacts"],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
        # its GenAI job runner (a huey consumer pool) serves nothing here and costs seconds of CPU at start
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", timeout=180, process=process)
    except BaseException as e:  # did not start, or the test was interrupted meanwhile: never leave it running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        if isinstance(e, TimeoutError):
            raise TimeoutError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}") from None
        raise
    return Server(uri, process, root)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()


def copy_working_tree(dest: Path) -> None:
    """The files git would see (tracked and new, not ignored), so tests run the code as it is now."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                             f"{result.stderr[-4000:]}")
    return result


@dataclass
class Repro:
    path: Path
    env: dict[str, str]
    output: str
    seconds: float


def make_project_copy(dest: Path, env: dict[str, str], overrides: list[str]) -> None:
    """A git repo holding the working tree with params.yaml composed from `overrides` and committed."""
    dest.mkdir(parents=True)
    copy_working_tree(dest)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    run(["git", "init", "-q"], dest, env)
    run([sys.executable, "-m", "pipeline.config", *overrides], dest, env)
    run([*git, "add", "-A"], dest, env)
    run([*git, "commit", "-qm", "test copy"], dest, env)


def run_queue(work: Path, env: dict[str, str], log: Path, jobs: int = 2, timeout: float = 900) -> str:
    """`dvc queue start -j <jobs>`, then wait until nothing is queued or running; `dvc queue status` at the end.

    The queue's workers inherit the starter's stdout: a log file, not a pipe, lets `start` return at once.
    Each `dvc queue status` costs about 2 s of CPU, which the experiments need on a 2-core machine, so the
    wait watches the result files DVC's task queue writes when a task ends (one per task), and asks
    `dvc queue status` once they are all there, or once a minute should that layout ever change.
    """
    tasks = run(["dvc", "queue", "status"], work, env).stdout.count("Queued")
    with open(log, "w") as out:
        subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=work, env=env, stdout=out,
                       stderr=subprocess.STDOUT, check=True, timeout=120)
    results = work / ".dvc" / "tmp" / "exps" / "celery" / "result"
    deadline, status, asked = time.monotonic() + timeout, "", time.monotonic()
    try:
        while True:
            ended = len(list(results.glob("celery-task-meta-*"))) if results.is_dir() else 0
            if ended >= tasks or time.monotonic() - asked > 60 or time.monotonic() > deadline:
                status, asked = run(["dvc", "queue", "status"], work, env).stdout, time.monotonic()
                if ("Running" not in status and "Queued" not in status) or time.monotonic() > deadline:
                    return status
            time.sleep(2 if ended < tasks else 5)
    finally:  # timed out or failed: end this copy's workers and their experiments, never leave them running
        if "Running" in status or "Queued" in status or not status:
            subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=work, env=env, capture_output=True, timeout=120)


def exp_revs(work: Path, env: dict[str, str]) -> dict[str, dict]:
    """The named experiments of `dvc exp show --json` in `work`: {name: rev}, each with its params and metrics."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], work, env).stdout)
    return {r["name"]: r for b in shown for e in (b.get("experiments") or []) for r in e.get("revs", [])
            if r.get("name")}


def wait_for_epochs(work: Path, n: int, process: subprocess.Popen, timeout: float = 240) -> None:
    """Until the training running in `work` has finished `n` epochs (its checkpoint's history.csv says so)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = list((work / "models" / "checkpoints").glob("*/history.csv"))
        if logs and len(logs[0].read_text().strip().splitlines()) - 1 >= n:
            return
        if process.poll() is not None:
            raise AssertionError(f"train ended early: {process.communicate()}")
        time.sleep(0.05)
    raise TimeoutError(f"no {n} epochs within {timeout}s")


def project_env(tracking_uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", MLFLOW_TRACKING_URI=tracking_uri,
               DVC_NO_ANALYTICS="1",  # no analytics daemon after every dvc command: CPU the tests need
               GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@localhost", GIT_COMMITTER_NAME="test",
               GIT_COMMITTER_EMAIL="test@localhost")
    return env


@pytest.fixture(scope="session")
def repro(tmp_path_factory: pytest.TempPathFactory, mlflow_server: Server) -> Repro:
    """`dvc repro` of `experiment=tiny` in a fresh copy, logging to the real MLflow server."""
    work = tmp_path_factory.mktemp("project") / "repo"
    env = project_env(mlflow_server.uri)
    make_project_copy(work, env, ["experiment=tiny"])
    start = time.monotonic()
    result = run(["dvc", "repro"], work, env, timeout=900)
    return Repro(work, env, result.stdout + result.stderr, time.monotonic() - start)


def stage_dir(tmp_path: Path, overrides: list[str], tracking_uri: str | None = None) -> tuple[Path, dict]:
    """A bare working directory with a composed params.yaml: stages need nothing else to run."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "params.yaml").write_text(OmegaConf.to_yaml(compose(overrides)))
    env = project_env(tracking_uri or f"sqlite:///{work / 'mlflow.db'}")
    return work, env


def stage(name: str, work: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"pipeline.{name}"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real SQLite MLflow store, one per test module: creating one takes seconds."""
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root / 'mlflow.db'}"


def params(*overrides: str, conf_dir: Path = CONF_DIR) -> Params:
    """The real conf/ composed with Hydra overrides and validated, as a stage sees it: `params("experiment=tiny")`."""
    return parse_params(compose(list(overrides), conf_dir=conf_dir))


@pytest.fixture
def project(store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Params:
    """The default config, run from a temporary project root that logs into `store`."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    return params()
