"""The model-zoo report (benchmarks/zoo.py) from a real tracking store, adding to the rows of earlier stores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow

from pipeline.flatparams import preset_of, preset_params, to_flat_dict
from tests.conftest import params

from .conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "train", "quantize", "benchmark", "evaluate")


def _store(tmp_path: Path) -> tuple[str, mlflow.MlflowClient, str]:
    """A fresh SQLite tracking store with the pipeline's experiment: (its URI, a client, the experiment id)."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(store)
    return store, client, client.create_experiment("fer-expression")


def _finished_run(client: mlflow.MlflowClient, experiment: str, name: str, accuracy: float) -> str:
    run = client.create_run(experiment, run_name=name, tags={"pipeline.data_family": "fer2013"} | {
        f"pipeline.stage.{s}": "done" for s in STAGES})
    rid = run.info.run_id
    for key, value in {"model.name": "convnet", "model.filters": "[24,32,128,256]", "quantize.views.flip": "true",
                       "train.seed": "42", "train.optimizer": "adamw", "train.schedule": "onecycle",
                       "train.lr": "0.003", "train.weight_decay": "0.01", "train.class_weight": "sqrt",
                       "train.augment.erasing": "0.5", "train.time_budget_min": "115"}.items():
        client.log_param(rid, key, value)
    for key, value in {"train/epochs": 140, "compute/macs_per_face": 160.3e6, "train/minutes": 115,
                       "train/images_per_s": 530, "val/accuracy": 0.69, "val/exported_accuracy": 0.7,
                       "test/keras_accuracy": accuracy,
                       "test/float32_accuracy": accuracy, "test/accuracy": accuracy, "test/macro_f1": 0.66,
                       "latency/ms_per_face": 0.9, "latency_ms_float32_t1": 0.8, "size/kib": 1119}.items():
        client.log_metric(rid, key, value)
    client.set_terminated(rid)
    return rid


def _zoo(store: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/zoo.py", "--tracking-uri", store, "--out", str(out), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_the_zoo_adds_this_stores_runs_to_the_earlier_rows(tmp_path: Path) -> None:
    store, client, experiment = _store(tmp_path)
    new = _finished_run(client, experiment, "fer2013-new", 0.68)[:8]  # the zoo keys rows by short run id
    out = tmp_path / "reports" / "fer2013"
    out.parent.mkdir()
    earlier = {"run": "old-run", "name": "fer2013-old", "model": "convnet", "filters": "[24,48,96,192]", "tta": False,
               "epochs": 60, "mmacs": 66.2, "train_min": 105, "img_s": 305, "val": 0.65, "keras": 0.651,
               "float32": 0.651, "int8": 0.6512, "f1_int8": 0.636, "lat_int8": 0.39, "lat_f32": None,
               "size_kb": 673, "seed": "42", "protocol": "holdout", "recipe": "wd 0.01, cw sqrt", "date": "2026-11-24"}
    stale = dict(earlier, run=new, name="fer2013-new", int8=0.5)  # this store's run, as an older report had it
    out.with_suffix(".json").write_text(json.dumps({"machine": "m", "rows": [stale, earlier]}))

    result = _zoo(store, out)
    assert result.returncode == 0, result.stderr
    rows = {r["run"]: r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    assert set(rows) == {new, "old-run"}
    assert rows[new]["int8"] == 0.68
    assert rows[new]["recipe"] == "adamw onecycle 0.003, wd 0.01, cw sqrt, erase 0.5, 115 min"
    assert rows["old-run"] == earlier | {"val_export": 0.65}  # one view, from before the views moved to export
    assert (rows[new]["val"], rows[new]["val_export"]) == (0.69, 0.7)
    table = out.with_suffix(".md").read_text()
    assert "| fer2013-new |" in table and "| fer2013-old |" in table
    assert out.with_name("fer2013-zoo.png").read_bytes()[:4] == b"\x89PNG"
    assert out.with_name("fer2013-macs.png").read_bytes()[:4] == b"\x89PNG"  # accuracy against MACs

    fresh = _zoo(store, out, "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    assert [r["run"] for r in json.loads(out.with_suffix(".json").read_text())["rows"]] == [new]


def test_a_run_that_re_exported_a_trained_network_is_a_row_and_an_unfinished_one_is_not(tmp_path: Path) -> None:
    """`fer2013_fast` after `fer2013`: DVC skips train, the run restores its record from the run that trained."""
    store, client, experiment = _store(tmp_path)
    trained = _finished_run(client, experiment, "fer2013-final", 0.69)
    for name, tag in (("fer2013-final-fast", "pipeline.restored.train"), ("fer2013-cut", "pipeline.other")):
        rid = _finished_run(client, experiment, name, 0.68)
        client.delete_tag(rid, "pipeline.stage.train")
        client.set_tag(rid, tag, trained)
    assert _zoo(store, tmp_path / "fer2013").returncode == 0
    names = [r["name"] for r in json.loads((tmp_path / "fer2013.json").read_text())["rows"]]
    assert sorted(names) == ["fer2013-final", "fer2013-final-fast"]


def test_a_run_fitted_on_train_and_val_has_no_val_figure(tmp_path: Path) -> None:
    """Its val faces were training data: the figure it logged would read as held-out."""
    store, client, experiment = _store(tmp_path)
    rid = _finished_run(client, experiment, "fer2013-incval", 0.69)
    client.log_param(rid, "train.include_val", "true")
    out = tmp_path / "fer2013"
    result = _zoo(store, out)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert row["val"] is None and "fit on train + val" in row["recipe"]
    (line,) = [li for li in out.with_suffix(".md").read_text().splitlines() if li.startswith("| fer2013-incval |")]
    assert "| 530 | – | – | 0.6900 |" in line  # images/s, no val figures, then the Keras test accuracy


def test_an_empty_store_and_no_report_is_one_line(tmp_path: Path) -> None:
    result = _zoo(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "fer2013")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: no finished FER2013 runs at sqlite:///")
    assert not (tmp_path / "fer2013.md").exists()


def test_a_run_is_named_by_the_preset_whose_model_and_train_params_it_has() -> None:
    zoo = load_benchmark("zoo")
    presets, defaults = preset_params("fer2013*"), to_flat_dict(params())
    logged = to_flat_dict(params("experiment=fer2013_fast", "data.path=elsewhere.zip"))
    assert preset_of(logged, presets) == "fer2013_fast"  # data params don't matter
    assert preset_of(logged | {"quantize.views.zoom": "44"}, presets) == "fer2013"
    assert preset_of(logged | {"train.lr": "0.001"}, presets) == ""
    assert preset_of(logged | {"train.seed": "1"}, presets) == "fer2013_fast"  # another seed of the preset
    distilled = to_flat_dict(params("experiment=fer2013_distill",
                                                   "train.distill.teachers=[release:fer-expression-fer2013-x]"))
    assert preset_of(distilled, presets) == "fer2013_distill"  # with the teacher the user named
    # a run from before the views moved to the export step logged them as model.tta_*
    older = {k: v for k, v in logged.items() if not k.startswith("quantize.views.")}
    assert preset_of(zoo.modern(older | {"model.tta_flip": "true", "model.tta_zoom": "44"}), presets) == "fer2013"
    # and one from before a key existed at all: the key counts at its default
    assert preset_of({k: v for k, v in logged.items() if k != "train.max_train_samples"}, presets,
                     defaults) == "fer2013_fast"


def test_the_recipe_cell_tells_the_seed_preset_from_ours() -> None:
    zoo = load_benchmark("zoo")
    flat = {k: str(v) for k, v in to_flat_dict(params("experiment=fer2013_seed")).items()}
    assert zoo.recipe(flat) == "adam constant 0.001, wd 0.0, cw none, no augmentation, 115 min"
    ours = {k: str(v) for k, v in to_flat_dict(params("experiment=fer2013")).items()}
    assert "no augmentation" not in zoo.recipe(ours) and zoo.recipe(ours).startswith("adamw onecycle")
    levers = {k: str(v) for k, v in to_flat_dict(params(
        "experiment=fer2013", "train.sam_rho=0.05", "train.augment.cutmix=0.5", "train.include_val=true",
        "train.keep_best=false")).items()}
    assert "cutmix 0.5, SAM rho 0.05, fit on train + val, 115 min" in zoo.recipe(levers)
    assert "SAM" not in zoo.recipe(ours) and "fit on train + val" in zoo.recipe(ours)  # the preset's final fit
    on_val = {k: str(v) for k, v in to_flat_dict(params(
        "experiment=fer2013", "train.include_val=false", "train.keep_best=true")).items()}
    assert "train + val" not in zoo.recipe(on_val)
    ensemble = {k: str(v) for k, v in to_flat_dict(params("experiment=fer2013", "train.members=3")).items()}
    assert "fit on train + val, 3 members averaged, 115 min" in zoo.recipe(ensemble)
    assert "members" not in zoo.recipe(ours)


def test_seeds_of_one_preset_on_one_host_are_summarised_and_other_hosts_are_not_mixed_in() -> None:
    zoo = load_benchmark("zoo")
    base = {"preset": "fer2013", "recipe": "adamw", "host": "Intel A", "val": 0.66, "epochs": 69, "img_s": 276}
    rows = [dict(base, name="a-s42", seed="42", int8=0.6748), dict(base, name="a-s1", seed="1", int8=0.6800),
            dict(base, name="b-s42", seed="42", int8=0.6938, host="AMD B"),  # one seed on its host: no summary
            dict(base, name="a-other", seed="7", int8=0.60, recipe="sgd"),  # another recipe is not a seed
            dict(base, name="a-nopreset", seed="3", int8=0.50, preset="")]
    (group,) = zoo.seed_groups(rows)
    assert (group["host"], group["seeds"], group["runs"]) == ("Intel A", ["1", "42"], ["a-s1", "a-s42"])
    assert abs(group["int8_mean"] - 0.6774) < 1e-12
    assert abs(group["int8_range"] - 0.0052) < 1e-12
    assert abs(group["int8_std"] - 0.0052 / 2 ** 0.5) < 1e-12
    table = "\n".join(zoo.seed_table([group]))
    assert "| `fer2013` | Intel A | 1 (a-s1), 42 (a-s42) |" in table and "**67.74%**" in table
    assert zoo.seed_groups(rows[2:]) == [] and zoo.seed_table([]) == []


def test_the_charts_labels_cover_no_other_label_even_where_runs_crowd() -> None:
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    zoo = load_benchmark("zoo")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    # six runs within 0.1 ms and 0.6 points of each other, as seeds of one preset are, and a loner
    points = [(0.90 + 0.01 * i, 69.0 + 0.1 * i, 9.0, f"fer2013 (run-number-{i})", "black") for i in range(6)]
    points.append((3.0, 62.0, 9.0, "far-away", "black"))
    for x, y, *_ in points:
        ax.scatter(x, y, s=4 * 9.0 ** 2)
    ax.set(xscale="log", xlim=(0.2, 8), ylim=(58, 73))
    zoo.place_labels(ax, points)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = {t.get_text(): Text.get_window_extent(t, renderer) for t in ax.texts}  # the text, not its leader
    assert sorted(boxes) == sorted(p[3] for p in points)
    names = list(boxes)
    overlapping = [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if boxes[a].overlaps(boxes[b])]
    assert overlapping == []
    frame = ax.get_window_extent(renderer)
    assert all(frame.contains(b.x0, b.y0) and frame.contains(b.x1, b.y1) for b in boxes.values())
    plt.close(fig)


def test_the_two_val_figures_of_runs_from_before_the_views_moved_to_export(tmp_path: Path) -> None:
    """Until 2026-12-01 the trained model carried its views: its val figure was the export's, not one view's."""
    store, client, experiment = _store(tmp_path)
    rid = _finished_run(client, experiment, "fer2013-old-views", 0.68)
    client.log_param(rid, "model.tta_flip", "true")
    assert _zoo(store, tmp_path / "fer2013").returncode == 0
    (row,) = json.loads((tmp_path / "fer2013.json").read_text())["rows"]
    assert (row["val"], row["val_export"]) == (None, 0.69)
    zoo = load_benchmark("zoo")
    kept = {"date": "2026-11-26", "tta": True, "zoom": 44, "val": 0.6865}
    assert zoo.migrated(kept) == kept | {"val": None, "val_export": 0.6865}
    assert zoo.migrated(dict(kept, date="2026-12-02", val=0.6733)) == dict(kept, date="2026-12-02", val=0.6733,
                                                                          val_export=None)
