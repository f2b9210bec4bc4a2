"""`python -m pipeline.lineage models:/<name>@<alias>`: what made this model, and how to make it again.

Everything comes from the registry and the tracking store, never from the local checkout: the version's
tags name its run; the run holds the resolved config (as override-syntax params), the git commit and
whether the tree was dirty, the data digests (MLflow dataset inputs) and the metrics. The config is shown
as a diff against the defaults in `conf/` *of the run's commit* (read from git, since conf/ may have moved
on since), turned into the `dvc exp run -S ...` that rebuilds it at that commit: group options first
(`-S data=fer2013`), then the single keys that still differ.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from hydra.errors import HydraException
from mlflow.exceptions import MlflowException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.config import CONF_DIR, ConfigError, compose, parse_params
from pipeline.flatparams import NOT_APPLICABLE, override_value, to_flat_dict
from pipeline.inference.registry import redact
from pipeline.metrics import HEADLINE_NAMES

GROUPS = ("data", "model")  # groups whose options change the key set, so `-S group=option` is needed

@contextmanager
def conf_at(commit: str) -> Iterator[tuple[Path, str]]:
    """`conf/` as it was at `commit` (from git), or today's with a note when git does not have that commit."""
    root = CONF_DIR.parent
    try:
        tar = subprocess.run(["git", "archive", "--format=tar", commit, "conf"], cwd=root, capture_output=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        yield CONF_DIR, f"commit {commit[:12]} not in this clone: diff against today's conf/"
        return
    with tempfile.TemporaryDirectory(prefix="fer-lineage-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
            archive.extractall(tmp, filter="data")
        yield Path(tmp) / "conf", f"conf/ at {commit[:12]}"


def flatten(cfg: Any) -> dict[str, str]:
    """A composed config as `section.key` -> override-syntax value, like the params a run logged.

    Validated when today's schema still fits (so values are typed exactly as they were logged); an
    older commit's config may not fit today's schema, and is then flattened as it is.
    """
    try:
        return to_flat_dict(parse_params(cfg))
    except ConfigError:
        flat: dict[str, str] = {}

        def walk(node: Any, prefix: str) -> None:
            for key, value in node.items():
                if isinstance(value, dict):
                    walk(value, f"{prefix}{key}.")
                else:
                    flat[f"{prefix}{key}"] = override_value(value)

        walk(OmegaConf.to_container(cfg), "")
        return flat


def _same(a: str | None, b: str | None) -> bool:
    """Equal as logged values; `5` and `5.0` are the same number (an older config may not fit today's types)."""
    if a == b:
        return True
    try:
        return float(a) == float(b)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _section(flat: dict[str, str], group: str) -> dict[str, str]:
    return {k: v for k, v in flat.items() if k.startswith(f"{group}.")}


def _overrides_from(preset: list[str], params: dict[str, str], conf_dir: Path) -> list[str]:
    """Overrides on top of `preset`: for each group the closest option, then every key that still differs."""
    overrides = list(preset)
    base = flatten(compose(preset, conf_dir=conf_dir))
    for group in GROUPS:
        wanted = _section(params, group)
        best: tuple[int, str, dict[str, str]] | None = None
        for path in sorted((conf_dir / group).glob("*.yaml")):
            flat = _section(flatten(compose([*preset, f"{group}={path.stem}"], conf_dir=conf_dir)), group)
            if set(flat) != set(wanted):
                continue
            distance = sum(not _same(flat[k], wanted[k]) for k in flat)
            if best is None or distance < best[0]:
                best = (distance, path.stem, flat)
        if best is None:
            raise ValueError(f"no conf/{group} option has the keys of this run's {group} section")
        if best[2] != _section(base, group):
            overrides.append(f"{group}={best[1]}")
        base.update(best[2])
    overrides += [f"{k}={v}" for k, v in params.items() if k in base and not _same(base[k], v)]
    return overrides


def rebuild_overrides(params: dict[str, str], conf_dir: Path = CONF_DIR) -> list[str]:
    """The shortest `-S` list that composes `conf_dir` into exactly `params`.

    Tried on the bare defaults and on each `experiment` preset (so a preset run rebuilds as
    `-S experiment=fer2013 -S data.path=...`, not twenty keys); each candidate is composed again and kept
    only if it gives back every logged value.
    """
    presets = [[]] + [[f"experiment={p.stem}"] for p in sorted((conf_dir / "experiment").glob("*.yaml"))]
    found: list[list[str]] = []
    for preset in presets:
        try:
            overrides = _overrides_from(preset, params, conf_dir)
            flat = flatten(compose(overrides, conf_dir=conf_dir))
        except (ValueError, HydraException, OmegaConfBaseException):
            continue
        if set(flat) == set(params) and all(_same(flat[k], v) for k, v in params.items()):
            found.append(overrides)
    if not found:
        raise ValueError(f"no composition of {conf_dir} gives this run's config")
    return min(found, key=len)


def describe(uri: str) -> dict[str, Any]:
    """Lineage of a registered version (`models:/name@alias` or `models:/name/version`) as a dict."""
    client = mlflow.MlflowClient()
    name, _, alias = uri.removeprefix("models:/").partition("@")
    if alias:
        version = client.get_model_version_by_alias(name, alias)
    else:
        name, _, number = name.partition("/")
        version = client.get_model_version(name, number)
    run = client.get_run(version.tags.get("run_id") or version.run_id)
    params = {k: v for k, v in run.data.params.items() if v != NOT_APPLICABLE}  # other sources' keys
    tags = run.data.tags
    commit = tags.get("mlflow.source.git.commit", "unknown")
    with conf_at(commit) as (conf_dir, conf_note):
        overrides = rebuild_overrides(params, conf_dir)
        defaults = flatten(compose(conf_dir=conf_dir))
    datasets = [{"context": next((t.value for t in d.tags if t.key == "mlflow.data.context"), ""),
                 "name": d.dataset.name, "digest": d.dataset.digest,
                 "rows": next((t.value for t in d.tags if t.key == "rows"), "")}
                for d in run.inputs.dataset_inputs]
    command = "dvc exp run" + "".join(f" -S '{o}'" for o in overrides) if overrides else "dvc repro"
    return {
        "model": uri, "name": version.name, "version": str(version.version), "run_id": run.info.run_id,
        "status": run.info.status, "commit": commit, "dirty": tags.get("git.dirty") == "true",
        "dvc_exp_name": tags.get("dvc.exp_name", ""),
        "data": {"source": params.get("data.source"), "path": params.get("data.path"),
                 "md5": tags.get("dvc.data_md5"), "train_digest": version.tags.get("train_digest"),
                 "test_digest": version.tags.get("test_digest"), "datasets": datasets},
        "config_base": conf_note,
        "config_diff": {k: {"default": defaults.get(k), "run": v} for k, v in params.items()
                        if not _same(defaults.get(k), v)},
        "metrics": {k: run.data.metrics[k] for k in HEADLINE_NAMES if k in run.data.metrics},
        "version_tags": dict(version.tags),
        "rebuild": {"overrides": overrides,
                    "command": f"git checkout {commit} && make venv && . .venv/bin/activate && {command}"},
    }


def render(info: dict[str, Any]) -> str:
    lines = [f"model     {info['model']} -> {info['name']} version {info['version']}",
             f"run       {info['run_id']} ({info['status']})" + (f", dvc exp {info['dvc_exp_name']}"
                                                                 if info["dvc_exp_name"] else ""),
             f"commit    {info['commit']}" + ("  (DIRTY: uncommitted changes when it ran)" if info["dirty"] else ""),
             f"data      {info['data']['source']} {info['data']['path']}  md5 {info['data']['md5']}"]
    for d in info["data"]["datasets"]:
        lines.append(f"          {d['context']:5s} {d['rows']:>6s} faces  digest {d['digest']}")
    base = info["config_base"]
    lines.append("config    " + (f"same as the defaults of {base}" if not info["config_diff"]
                                 else f"differs from the defaults of {base}:"))
    for key, diff in info["config_diff"].items():
        lines.append(f"          {key}: {diff['default']} -> {diff['run']}")
    lines.append("metrics   " + "  ".join(f"{k} {v:.4g}" for k, v in info["metrics"].items()))
    lines.append(f"rebuild   {info['rebuild']['command']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="models:/<name>@<alias> or models:/<name>/<version>")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI or ./mlflow.db")
    args = parser.parse_args()
    from pipeline.tracking import tracking_uri

    uri = args.tracking_uri or tracking_uri(parse_params(compose()).mlflow)
    mlflow.set_tracking_uri(uri)
    try:
        info = describe(args.model)
    except MlflowException as e:
        raise SystemExit(f"error: {args.model}: not found at {redact(uri)} ({e.error_code})") from None
    except ValueError as e:
        raise SystemExit(f"error: {args.model}: {e}") from None
    print(json.dumps(info, indent=2) if args.json else render(info))


if __name__ == "__main__":
    sys.exit(main())
