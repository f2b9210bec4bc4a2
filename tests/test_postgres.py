"""A real database server under the pipeline: PostgreSQL (Debian's package) in a temporary data directory, an
`mlflow server` on it that serves the artifacts itself, two queued experiments run in parallel against it, and
then the database going away in the middle of a training.

Where it runs, it stands for the SQLite-backed server's queue test in test_faults.py (one queue per suite).
Skipped where the PostgreSQL server binaries are missing (`apt-get install postgresql`; `.ci/run` installs them).
Postgres refuses to run as root, so as root the cluster runs as the `postgres` user the package creates.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from omegaconf import OmegaConf

from pipeline.inference.contract import Tag, metric_tag
from pipeline.inference.registry import download_registered

from .conftest import (
    exp_revs,
    free_port,
    make_project_copy,
    postgres_bin,
    project_env,
    run,
    run_queue,
    stage_dir,
    start_mlflow_server,
    wait_for_epochs,
)

pytestmark = pytest.mark.integration

TINY = ["experiment=tiny"]
STAGES = ("prepare", "train", "quantize", "benchmark", "evaluate")
MODEL = "fer-expression-synthetic"


@dataclass
class Postgres:
    bin: Path
    root: Path  # owned by the server's user: data/, the unix socket, the log
    port: int
    as_user: list[str]  # the command prefix that runs a tool as the server's user

    @property
    def uri(self) -> str:
        return f"postgresql://mlflow@127.0.0.1:{self.port}/mlflow"

    def tool(self, name: str, *args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.as_user, str(self.bin / name), *args], capture_output=True, text=True,
                                timeout=120)
        if result.returncode != 0:
            log = self.root / "postgres.log"
            raise AssertionError(f"{name} failed: {result.stdout}{result.stderr}"
                                 f"{log.read_text()[-2000:] if log.exists() else ''}")
        return result

    def stop(self) -> None:
        """What a crash or an unplugged database host looks like to its clients: no clean shutdown."""
        self.tool("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")


def start_postgres() -> Postgres:
    binaries = postgres_bin()
    if binaries is None or not (binaries / "pg_ctl").exists():
        if os.environ.get("CI"):  # .ci/run installs them: a skip there would hide a broken install step
            pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) missing in CI; .ci/run should have installed them")
        pytest.skip("PostgreSQL server binaries not found (initdb, pg_ctl): `apt-get install postgresql` "
                    "(Debian), as .ci/run does")
    as_user: list[str] = []
    # /tmp, not pytest's tmp_path: the server's user must be able to reach it, and pytest's folders are 0700
    root = Path(tempfile.mkdtemp(prefix="fer-postgres-"))
    if os.getuid() == 0:  # postgres will not run as root
        runuser = shutil.which("runuser")
        try:
            import pwd

            user = pwd.getpwnam("postgres")
        except KeyError:
            user = None
        if runuser is None or user is None:
            shutil.rmtree(root)
            pytest.skip("running as root, and there is no `postgres` user (or no runuser) to run PostgreSQL as")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = [runuser, "-u", "postgres", "--"]
    pg = Postgres(binaries, root, free_port(), as_user)
    try:
        pg.tool("initdb", "-D", str(root / "data"), "-U", "mlflow", "--auth=trust", "-E", "UTF8", "--no-sync")
        # a throwaway cluster: durability costs time and buys nothing here
        options = f"-h 127.0.0.1 -p {pg.port} -k {root} -c fsync=off -c synchronous_commit=off " \
                  "-c full_page_writes=off"
        pg.tool("pg_ctl", "-D", str(root / "data"), "-l", str(root / "postgres.log"), "-w", "-t", "60",
                "-o", options, "start")
        pg.tool("createdb", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "mlflow", "mlflow")
    except BaseException:
        remove_postgres(pg)
        raise
    return pg


def remove_postgres(pg: Postgres) -> None:
    """Stop the server if it still runs (pg_ctl, else its pid file), then delete the data directory."""
    pid_file = pg.root / "data" / "postmaster.pid"
    if pid_file.exists():
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            pg.stop()
    if pid_file.exists():
        with contextlib.suppress(ValueError, IndexError, ProcessLookupError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
    shutil.rmtree(pg.root, ignore_errors=True)


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    pg = start_postgres()
    try:
        yield pg
    finally:
        remove_postgres(pg)
        assert not pg.root.exists()


def _check_logged_in_full(client: mlflow.MlflowClient, experiment: str, name: str, epochs: int, cache: Path) -> dict:
    """One FINISHED run holding every stage, its artifacts on the server, a registered version; -> the version."""
    found = client.search_runs([experiment], f"tags.`dvc.exp_name` = '{name}'")
    assert len(found) == 1, f"{name}: {len(found)} runs"  # all five stages in one run
    run_ = found[0]
    assert run_.info.status == "FINISHED"
    assert {s: run_.data.tags.get(f"pipeline.stage.{s}") for s in STAGES} == dict.fromkeys(STAGES, "done")
    assert {a.path for a in client.list_artifacts(run_.info.run_id)} >= set(STAGES) - {"quantize"} | {"tflite"}
    assert float(run_.data.params["train.epochs"]) == epochs
    version = client.get_model_version(MODEL, run_.data.tags["registered_version"])
    assert version.run_id == run_.info.run_id
    # the score the version carries is one the run logged, and its file comes back through the server, sha256-checked
    score = float(version.tags[metric_tag("accuracy")])
    assert score in run_.data.metrics.values()
    download_registered(f"models:/{MODEL}/{version.version}", client.tracking_uri, cache_dir=cache / name)
    return {"version": version.version, "score": score, "digest": version.tags[Tag.test_digest]}


def test_two_parallel_experiments_on_postgres_then_the_database_stops_mid_training(tmp_path: Path,
                                                                                   postgres: Postgres) -> None:
    import psycopg  # noqa: F401  (SQLAlchemy's postgresql:// driver, in requirements.lock: missing fails here)

    (tmp_path / "server").mkdir()
    server = start_mlflow_server(tmp_path / "server", postgres.uri, tmp_path / "artifacts")
    try:
        # ---- two queued experiments at once (-j 2) against the one database
        work = tmp_path / "repo"
        env = project_env(server.uri)
        make_project_copy(work, env, TINY)
        epochs = {"pg-four": 4, "pg-six": 6}  # both above the promotion floor: a real comparison
        for name, n in epochs.items():
            # `-S` recomposes params.yaml from conf/ (DVC's Hydra support): the preset goes along each time
            run(["dvc", "exp", "run", "--queue", "-n", name, "-S", "experiment=tiny", "-S", f"train.epochs={n}"],
                work, env)
        # meanwhile a third project prepares its data for the training that will lose the database
        third, third_env = stage_dir(tmp_path, [*TINY, "train.epochs=60"], tracking_uri=server.uri)
        prepare = subprocess.Popen([sys.executable, "-m", "pipeline.prepare"], cwd=third, env=third_env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # ~2 min on an idle 2-core machine; the limit is for one that other jobs keep busy
        status = run_queue(work, env, tmp_path / "queue.log", timeout=1800)
        assert prepare.wait(timeout=300) == 0, prepare.stderr.read()
        assert status.count("Success") == 2, status + (tmp_path / "queue.log").read_text()[-3000:]
        # `-S` went through Hydra into each experiment's params, and `dvc exp show` lists accuracy and latency
        revs = exp_revs(work, env)
        for name, n in epochs.items():
            data = revs[name]["data"]
            assert data["params"]["params.yaml"]["data"]["train"]["epochs"] == n
            assert "test/accuracy" in data["metrics"]["metrics/evaluate.json"]["data"]
            assert "latency/ms_per_face" in data["metrics"]["metrics/benchmark.json"]["data"]

        client = mlflow.MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("fer-expression").experiment_id
        logged = {name: _check_logged_in_full(client, experiment, name, n, tmp_path / "cache")
                  for name, n in epochs.items()}
        assert len({v["version"] for v in logged.values()}) == 2
        assert len({v["digest"] for v in logged.values()}) == 1  # same test split: comparable
        assert any((tmp_path / "artifacts").rglob("*.tflite"))  # stored by the server, not by the clients
        best = max(logged.values(), key=lambda v: v["score"])
        champion = client.get_model_version_by_alias(MODEL, "champion")
        assert float(champion.tags[metric_tag("accuracy")]) == best["score"], logged

        # ---- the database stops (no clean shutdown) in the middle of a further training
        err_path = tmp_path / "train.err"
        with open(tmp_path / "train.out", "w") as out, open(err_path, "w") as err:
            train = subprocess.Popen([sys.executable, "-m", "pipeline.train"], cwd=third, env=third_env, stdout=out,
                                     stderr=err, text=True)
        try:
            wait_for_epochs(third, 1, train)
            postgres.stop()
            gone = time.monotonic()
            train.wait(timeout=180)
        finally:
            if train.poll() is None:
                train.kill()
        elapsed = time.monotonic() - gone
    finally:
        server.stop()

    mlflow_cfg = OmegaConf.load(third / "params.yaml").mlflow
    # the epoch that was running ends (as long as one epoch, twice that on a machine whose load varies), then
    # its log request and the run's end each fail after (retries + 1) attempts of at most timeout_s, with a
    # backoff of 0 s, 2 s, 4 s ... between them
    per_request = (mlflow_cfg.retries + 1) * mlflow_cfg.timeout_s + 2 ** mlflow_cfg.retries
    epoch_s = max(float(s) for s in re.findall(r"^\[train\] epoch .* ([\d.]+)s +\d+ img/s$",
                                                (tmp_path / "train.out").read_text(), flags=re.M))
    assert elapsed < 2 * epoch_s + 2 * per_request + 5, f"{elapsed:.0f}s after the database stopped"
    stderr = err_path.read_text()
    assert train.returncode == 1, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error")]
    assert errors == [stderr.strip().splitlines()[-1]], stderr[-3000:]
    assert errors[0].startswith(f"error: [train] MLflow at {server.uri} failed:")
    assert not (third / "models/model.keras").exists()
    checkpoint = list((third / "models/checkpoints").glob("*/history.csv"))
    assert checkpoint and list(checkpoint[0].parent.glob("backup"))  # the checkpoint is kept for a resume
    assert len(checkpoint[0].read_text().strip().splitlines()) >= 2  # header + at least one finished epoch
