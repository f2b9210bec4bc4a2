"""`python -m pipeline.lineage models:/<name>@<alias>`: what made this model, and how to make it again.

Everything comes from the registry and the tracking store, never from the local checkout: the version's
tags name its run; the run holds the resolved config (as override-syntax params), the git commit and
whether the tree was dirty, the data digests (MLflow dataset inputs) and the metrics. The config is shown
as a diff against today's defaults in `conf/`, turned into the `dvc exp run -S ...` that rebuilds it:
group options first (`-S data=fer2013`), then the single keys that still differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from pipeline.config import CONF_DIR, compose, parse_params, to_flat_dict
from pipeline.runtime import redact

GROUPS = ("data", "model")  # groups whose options change the key set, so `-S group=option` is needed
KEY_METRICS = ("test_accuracy", "test_macro_f1", "val_accuracy", "baseline_logreg_accuracy", "latency_ms",
               "frame_end_to_end_ms", "size_kb_int8", "train_seconds")


def _group_flat(group: str, option: str) -> dict[str, str]:
    flat = to_flat_dict(parse_params(compose([f"{group}={option}"])))
    return {k: v for k, v in flat.items() if k.startswith(f"{group}.")}


def rebuild_overrides(params: dict[str, str]) -> list[str]:
    """The shortest `-S` list that turns the default composition into `params`.

    For each group, the option with the same keys and the fewest differing values is chosen; every key
    that still differs becomes a `key=value` override.
    """
    overrides: list[str] = []
    base = to_flat_dict(parse_params(compose()))
    for group in GROUPS:
        wanted = {k: v for k, v in params.items() if k.startswith(f"{group}.")}
        best: tuple[int, str] | None = None
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            flat = _group_flat(group, path.stem)
            if set(flat) != set(wanted):
                continue
            distance = sum(flat[k] != wanted[k] for k in flat)
            if best is None or distance < best[0]:
                best = (distance, path.stem)
        if best is None:
            raise ValueError(f"no conf/{group} option has the keys of this run's {group} section")
        option_flat = _group_flat(group, best[1])
        if option_flat != {k: v for k, v in base.items() if k.startswith(f"{group}.")}:
            overrides.append(f"{group}={best[1]}")
        base.update(option_flat)
    for key, value in params.items():
        if key in base and base[key] != value:
            overrides.append(f"{key}={value}")
    return overrides


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
    params = dict(run.data.params)
    overrides = rebuild_overrides(params)
    defaults = to_flat_dict(parse_params(compose()))
    datasets = [{"context": next((t.value for t in d.tags if t.key == "mlflow.data.context"), ""),
                 "name": d.dataset.name, "digest": d.dataset.digest,
                 "rows": next((t.value for t in d.tags if t.key == "rows"), "")}
                for d in run.inputs.dataset_inputs]
    tags = run.data.tags
    command = "dvc exp run" + "".join(f" -S '{o}'" for o in overrides) if overrides else "dvc repro"
    commit = tags.get("mlflow.source.git.commit", "unknown")
    return {
        "model": uri, "name": version.name, "version": str(version.version), "run_id": run.info.run_id,
        "status": run.info.status, "commit": commit, "dirty": tags.get("git.dirty") == "true",
        "dvc_exp_name": tags.get("dvc.exp_name", ""),
        "data": {"source": params.get("data.source"), "path": params.get("data.path"),
                 "md5": tags.get("dvc.data_md5"), "train_digest": version.tags.get("train_digest"),
                 "test_digest": version.tags.get("test_digest"), "datasets": datasets},
        "config_diff": {k: {"default": defaults.get(k), "run": v} for k, v in params.items()
                        if defaults.get(k) != v},
        "metrics": {k: run.data.metrics[k] for k in KEY_METRICS if k in run.data.metrics},
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
    lines.append("config    " + ("same as conf/ defaults" if not info["config_diff"] else "differs from defaults:"))
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
