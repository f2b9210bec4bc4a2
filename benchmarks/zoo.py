"""The FER2013 model zoo from the tracking store: accuracy against latency, one row per finished run.

    .venv/bin/python benchmarks/zoo.py [--tracking-uri URI] [--out reports/fer2013]

Reads every finished pipeline run on FER2013 data (tag `pipeline.data_family = fer2013`, all five stages
done) through MLflow's client, and writes `<out>.json` (the rows), `<out>.md` (a table: model, recipe, MACs,
training time and images/s, PublicTest accuracy and macro-F1 of Keras / float32 / int8, int8 latency at 1
thread, size, and the experiment preset the run's params match; then, for each preset run with several seeds
on one CPU type, their mean and spread) and `<out>-zoo.png` (int8 accuracy against
per-face latency, the peer package for reference).
Numbers only: no FER2013 image goes into any of them.

Rows already in `<out>.json` whose run is not in this store (measured earlier, in a store since deleted)
are kept, so a new store adds to the zoo instead of erasing it; `--fresh` starts over. Each row names the
host it trained and was benchmarked on (the run's `train.machine` tag, else the benchmark's record): the
hosts differ by CPU generation, and so do training images/s, the epochs a time budget reaches, and latency.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mlflow
from matplotlib import ticker
from matplotlib.transforms import Bbox

from pipeline.files import atomic_path, write_json, write_text
from pipeline.record import fitted_on_val, stage_recorded

STAGES = ("train", "quantize", "benchmark", "evaluate")  # a resumed run links to the one that ran prepare
# The PyPI `fer` package, measured on the AVX-512 AMD EPYC host: 65.3 % PublicTest, 0.52 ms/face.
PEER = {"name": "PyPI fer (mini-Xception)", "accuracy": 0.653, "latency_ms": 0.52}
# Issue 14's targets (int8 PublicTest %, ms per face at 1 thread), drawn as the corners a run must reach
TARGETS = [("fer2013_fast", 68.0, 0.4, "#59a14f"), ("fer2013", 70.0, 1.0, "#4e79a7"),
           ("fer2013_long", 72.0, 1.5, "#b07aa1")]
MAC_TARGETS = [("release model 2", 70.0, 80.0, "#4e79a7"), ("its stretch", 70.0, 40.0, "#b07aa1")]  # issue 38


VIEWS_AT_EXPORT = "2026-12-02"  # the first day of runs whose views were added at export, not in training
EXPORT_VAL_SINCE = "2026-12-06"  # the evaluate stage logs `val/exported_accuracy`


def exported_val(client: mlflow.MlflowClient, run: mlflow.entities.Run) -> float:
    """Runs before `train_val_accuracy` logged the exported model's val accuracy as step 0 of the curve."""
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    return next((m.value for m in history if m.step == 0), float("nan"))


def val_figures(client: mlflow.MlflowClient, run: mlflow.entities.Run, tta: bool) -> tuple[float | None, ...]:
    """(one view of the trained network, the exported model with its views) on val; None where a run did
    not measure it or trained on val. Before the views moved to export (runs with `model.tta_*` params),
    the trained model carried its views, so training's val figure was the exported model's."""
    m, p = run.data.metrics, run.data.params
    if fitted_on_val(p):
        return None, None
    logged = metric(m, "val/accuracy", "train_val_accuracy") or exported_val(client, run)
    if "model.tta_flip" in p:
        return (None if tta else logged), logged
    return logged, m.get("val/exported_accuracy")


def migrated(row: dict) -> dict:
    """A row of an earlier report, from before the zoo told the two val figures apart (`val_figures`)."""
    if "val_export" in row:
        return row
    if row.get("date", "") < VIEWS_AT_EXPORT:
        return row | {"val": None if row["tta"] or row.get("zoom") else row["val"], "val_export": row["val"]}
    return row | {"val_export": None}


def collect(client: mlflow.MlflowClient) -> list[dict]:
    experiment = client.get_experiment_by_name("fer-expression")
    if experiment is None:
        return []
    from pipeline.config import compose, parse_params
    from pipeline.flatparams import preset_params, to_flat_dict

    rows, presets, defaults = [], preset_params("fer2013*"), to_flat_dict(parse_params(compose()))
    for run in client.search_runs([experiment.experiment_id], "tags.`pipeline.data_family` = 'fer2013'",
                                  order_by=["attributes.start_time DESC"], max_results=500):
        tags, m, p = run.data.tags, run.data.metrics, run.data.params
        # a stage DVC skipped (e.g. fer2013_fast exporting fer2013's trained network) was restored from its run
        if not all(stage_recorded(s, tags) for s in STAGES):
            continue
        tta = p.get("quantize.views.flip", p.get("model.tta_flip")) == "true"
        zoom = int(p.get("quantize.views.zoom", p.get("model.tta_zoom", 0)))  # older runs: model.tta_*
        val, val_export = val_figures(client, run, tta or bool(zoom))
        rows.append({
            "run": run.info.run_id[:8], "name": run.info.run_name, "preset": preset_name(run, presets, defaults),
            "model": p.get("model.name"),
            "filters": p.get("model.filters", ""),
            "tta": tta, "zoom": zoom,
            "epochs": int(metric(m, "train/epochs", "train_epochs") or 0),
            "mmacs": (metric(m, "compute/macs_per_face", "macs_per_face") or 0) / 1e6,
            "train_min": metric(m, "train/minutes") or (m.get("train_seconds", 0) / 60),
            "img_s": metric(m, "train/images_per_s", "train_images_per_s") or 0,
            "keras": metric(m, "test/keras_accuracy", "test_accuracy_keras"),
            "float32": metric(m, "test/float32_accuracy", "test_accuracy_float32"),
            "int8": metric(m, "test/accuracy", "test_accuracy_int8"),
            "f1_int8": metric(m, "test/macro_f1", "test_macro_f1_int8"),
            "lat_int8": metric(m, "latency/ms_per_face", "latency_ms_int8_t1"),
            "lat_f32": m.get("latency_ms_float32_t1"),  # per-variant latency is in benchmark/details.json now
            "size_kb": metric(m, "size/kib", "size_kb_int8"), "seed": p.get("train.seed"),
            "protocol": tags.get("protocol", ""),
            "val": val, "val_export": val_export,
            "recipe": recipe(p) + ("" if tags.get("train.precision", "float32") == "float32"
                                   else f", {tags['train.precision']}"),
            "host": host(run), "date": datetime.fromtimestamp(run.info.start_time / 1000, UTC).strftime("%Y-%m-%d"),
        })
    return rows


def host(run: mlflow.entities.Run) -> str:
    """The CPU the run trained on, as `pipeline.timing.machine_name` writes it; runs from before the
    `train.machine` tag: the host their benchmark stage recorded."""
    from pipeline.timing import machine_name

    if "train.machine" in run.data.tags:
        return run.data.tags["train.machine"]
    try:
        details = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/benchmark/details.json")
    except Exception:  # no record of the host is a blank cell, not a failed report
        return ""
    return machine_name(details.get("machine", {}))


def metric(m: dict[str, float], name: str, older: str | None = None) -> float | None:
    """A run's metric by its name, or by the name runs logged before the `<area>/<what>` scheme."""
    return m.get(name, m.get(older) if older else None)


RENAMED = {"model.tta_flip": "quantize.views.flip", "model.tta_zoom": "quantize.views.zoom"}  # runs before 12-01


def modern(p: dict[str, str]) -> dict[str, str]:
    """A run's logged params under today's names."""
    return {RENAMED.get(k, k): v for k, v in p.items()}


def preset_name(run: mlflow.entities.Run, presets: dict[str, dict[str, str]], defaults: dict[str, str]) -> str:
    """The preset the run recorded (`pipeline.preset`, as the preset was when it ran); runs from before that
    tag: the FER2013 preset whose params they have today, all of them ('' for a run of another recipe)."""
    from pipeline.flatparams import preset_of

    if "pipeline.preset" in run.data.tags:
        return run.data.tags["pipeline.preset"]
    return preset_of(modern(run.data.params), presets, defaults)


LEVERS = {"train.augment.erasing": "erase", "train.augment.mixup": "mixup", "train.augment.cutmix": "cutmix",
          "train.sam_rho": "SAM rho"}  # numeric recipe levers, named in a recipe cell when not 0


def recipe(p: dict[str, str]) -> str:
    """What distinguishes the FER2013 runs' recipes, short enough for a table cell."""
    optimizer = " ".join(p[k] for k in ("train.optimizer", "train.schedule", "train.lr") if k in p)
    parts = [*([optimizer] if optimizer else []), f"wd {p.get('train.weight_decay')}",
             f"cw {p.get('train.class_weight')}"]
    augment = [v.lower() for k, v in p.items() if k.startswith("train.augment.")]
    if augment and all(v in ("false", "0", "0.0") for v in augment):
        parts.append("no augmentation")
    parts += [f"{label} {p[key]}" for key, label in LEVERS.items() if float(p.get(key, 0))]
    if float(p.get("train.distill.weight", 0)):
        parts.append(f"distilled from {p.get('train.distill.teachers', '?')} (weight {p['train.distill.weight']}, "
                     f"T {p.get('train.distill.temperature')})")
    if fitted_on_val(p):
        parts.append("fit on train + val")
    if int(p.get("train.members", 1)) > 1:  # an ensemble: its figures are the members' average
        parts.append(f"{p['train.members']} members averaged")
    if float(p.get("train.time_budget_min", 0)):
        parts.append(f"{float(p['train.time_budget_min']):g} min")
    return ", ".join(parts)


def merge(found: list[dict], earlier: list[dict]) -> list[dict]:
    """This store's rows, then the earlier report's rows for runs this store does not hold, newest first."""
    ids = {r["run"] for r in found}
    return sorted(found + [r for r in earlier if r["run"] not in ids], key=lambda r: r.get("date", ""), reverse=True)


def seed_groups(rows: list[dict]) -> list[dict]:
    """Runs of one preset and recipe on one CPU type that differ only by seed: one summary each, so a
    headline is a mean with its spread (a single run carries about 0.8 points of standard error) and not
    the luckiest seed. Hosts are compared by the name their tag gives; an earlier, slower day of a CPU type
    is a host of its own."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("preset") and r.get("seed") is not None:
            groups.setdefault((r["preset"], r.get("host") or "unknown", r["recipe"]), []).append(r)
    summaries = []
    for (preset, where, recipe_), members in groups.items():
        if len({r["seed"] for r in members}) < 2:
            continue
        members = sorted(members, key=lambda r: str(r["seed"]))
        int8 = [r["int8"] for r in members]
        summaries.append({
            "preset": preset, "host": where, "recipe": recipe_, "seeds": [r["seed"] for r in members],
            "runs": [r["name"] for r in members], "int8": int8, "int8_mean": statistics.fmean(int8),
            "int8_std": statistics.stdev(int8), "int8_range": max(int8) - min(int8),
            "val_mean": None if any(r["val"] is None for r in members) else statistics.fmean(r["val"] for r in members),
            "epochs": [r["epochs"] for r in members], "img_s": [r["img_s"] for r in members]})
    return summaries


def share(value: float | None, spec: str) -> str:
    """A table cell; a dash where there is no figure (no held-out val after a fit on train + val)."""
    return "–" if value is None else format(value, spec)


def seed_table(summaries: list[dict]) -> list[str]:
    if not summaries:
        return []
    lines = ["", "## Seeds", "",
             "Runs of one preset and recipe on one CPU type that differ only by `train.seed`. Spread: the sample "
             "standard deviation and the range (max - min) of the int8 PublicTest accuracy.", "",
             "| preset | host | seeds (runs) | epochs | img/s | int8 acc per seed | int8 mean | std | range "
             "| val mean, one view |", "|---|---|---|---|---|---|---|---|---|---|"]
    for g in summaries:
        seeds = ", ".join(f"{s} ({n})" for s, n in zip(g["seeds"], g["runs"], strict=True))
        lines.append(f"| `{g['preset']}` | {g['host']} | {seeds} | {', '.join(str(e) for e in g['epochs'])} | "
                     f"{', '.join(f'{v:.0f}' for v in g['img_s'])} | "
                     f"{', '.join(f'{v:.2%}' for v in g['int8'])} | **{g['int8_mean']:.2%}** | "
                     f"{g['int8_std'] * 100:.2f} points | {g['int8_range'] * 100:.2f} points | "
                     f"{share(g['val_mean'], '.2%')} |")
    return lines


def write_table(rows: list[dict], path: Path) -> None:
    lines = [
        "# FER2013 model zoo",
        "",
        f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `benchmarks/zoo.py` from the MLflow runs. PublicTest "
        "(3,589 faces) is the test split (holdout protocol: validation is a seeded stratified 10 % of Training; "
        "val is the only split a recipe was chosen on). 'val, one view': the trained network (Keras) on each face "
        "once; 'val, export': the registered int8 model with its test-time views, as the evaluate stage scores it "
        f"since {EXPORT_VAL_SINCE} (before {VIEWS_AT_EXPORT} the trained model carried its views, so training's "
        "figure was the export's; runs in between have one view only). Latency: "
        "LiteRT, batch 1, 1 thread, median of the benchmark stage, on the row's host: compare milliseconds, "
        "images/s and epochs only between rows of one host. A run fitted on train + val (its recipe says so) has "
        "no val figure: its val faces were training data.",
        "",
        "| run | preset | date | host | model | recipe | MACs (M) | epochs | train min | img/s | val, one view "
        "| val, export | Keras acc | float32 acc | int8 acc | int8 macro-F1 | int8 ms/face | int8 KiB | seed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = f"{r['model']} {r['filters']}" + (" +flip" if r["tta"] else "") + (
            f" +zoom {r['zoom']}" if r.get("zoom") else "")
        preset = f"`{r['preset']}`" if r.get("preset") else ""
        lines.append(f"| {r['name']} | {preset} | {r.get('date', '')} | {r.get('host') or 'unknown'} | {name} | "
                     f"{r['recipe']} | {r['mmacs']:.1f} | "
                     f"{r['epochs']} | {r['train_min']:.0f} | {r['img_s']:.0f} | {share(r['val'], '.4f')} | "
                     f"{share(r.get('val_export'), '.4f')} | "
                     f"{r['keras']:.4f} | "
                     f"{r['float32']:.4f} | {r['int8']:.4f} | "
                     f"{r['f1_int8']:.4f} | {r['lat_int8']:.3f} | {r['size_kb']:.0f} | {r['seed']} |")
    lines += ["", "Preset: the experiment preset (`conf/experiment/`) whose model, train and view parameters the run "
              "had, all of them, as the run recorded it (tag `pipeline.preset`) or, for runs before that tag, as the "
              "presets were when the row was written; empty for runs of other recipes.",
              "", f"Peer for reference: {PEER['name']}, {PEER['accuracy']:.1%} PublicTest, "
              f"{PEER['latency_ms']} ms/face (measured on the AVX-512 AMD EPYC host).", *seed_table(seed_groups(rows)),
              ""]
    write_text(path, "\n".join(lines))


def marker_radius(row: dict) -> float:
    """A run's marker radius in points: the marker's area grows with the network's MACs."""
    return (40 + row["mmacs"]) ** 0.5 / 2


def label_spots(radius: float) -> list[tuple[float, float, str, str]]:
    """Where a label may go, nearest first: beside, above or below its marker, then rings further out."""
    spots = []
    for ring in (0, 14, 30, 50, 75, 105):
        gap = radius + 2 + ring
        spots += [(gap, 0, "left", "center"), (-gap, 0, "right", "center"), (0, gap, "center", "bottom"),
                  (0, -gap, "center", "top"), (gap, gap, "left", "bottom"), (gap, -gap, "left", "top"),
                  (-gap, gap, "right", "bottom"), (-gap, -gap, "right", "top")]
    return spots


def place_labels(ax: plt.Axes, points: list[tuple[float, float, float, str, str]]) -> None:
    """Label each (x, y, radius, text, colour) point at the first spot that covers no marker, note or earlier label.

    Placed in display space after the axes' limits are final, so what is checked is what is drawn; a label
    moved away from its marker gets a leader line, and one with no free spot takes the spot covering the fewest."""
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    points_to_px = ax.figure.dpi / 72
    taken = [text.get_window_extent(renderer) for text in ax.texts]  # the targets' notes
    for x, y, radius, _, _ in points:
        cx, cy = ax.transData.transform((x, y))
        r = radius * points_to_px
        taken.append(Bbox.from_extents(cx - r, cy - r, cx + r, cy + r))
    for x, y, radius, text, colour in points:
        best = None
        for dx, dy, ha, va in label_spots(radius):
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va,
                                fontsize=8, color=colour)
            box = label.get_window_extent(renderer)
            cost = sum(box.overlaps(b) for b in taken) + 100 * (not frame.contains(box.x0, box.y0)
                                                               or not frame.contains(box.x1, box.y1))
            label.remove()
            if best is None or cost < best[0]:
                best = (cost, (dx, dy, ha, va), box)
            if cost == 0:
                break
        dx, dy, ha, va = best[1]
        far = abs(dx) > radius + 2 or abs(dy) > radius + 2 or dx * dy != 0  # not right beside: a leader line
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, fontsize=8,
                    color=colour, arrowprops={"arrowstyle": "-", "color": colour, "lw": 0.5, "shrinkA": 0,
                                              "shrinkB": radius} if far else None)
        taken.append(best[2])


@dataclass(frozen=True)
class Axis:
    """What a chart puts on its log x axis: a row's key, the axis label, the title, and each target's corner."""
    key: str
    label: str
    title: str
    unit: str
    targets: list[tuple[str, float, float, str]]  # (name, at least this accurate %, at most this x, colour)
    peer: float | None  # the peer package's x, if measured
    label_all: bool = True  # else only the most accurate run at each x (many runs share a network's MACs)


LATENCY = Axis("lat_int8", "int8 latency per face, ms (LiteRT, 1 thread, log scale)",
               "FER2013 model zoo (latency on each run's host)", "ms", TARGETS, PEER["latency_ms"])
# MACs do not depend on the host: the one axis on which runs of every CPU type compare directly
MACS = Axis("mmacs", "multiply-accumulates per face, millions, all test-time views (log scale)",
            "FER2013 model zoo: accuracy against the arithmetic a face costs", "M MACs", MAC_TARGETS, None,
            label_all=False)


def write_chart(rows: list[dict], path: Path, axis: Axis = LATENCY) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    colours = dict(zip(dict.fromkeys(r.get("host") or "unknown" for r in rows), plt.cm.tab10.colors, strict=False))
    points, labelled = [], set()
    for r in sorted(rows, key=lambda r: -r["int8"]):  # the most accurate runs get the first pick of spots
        where = r.get("host") or "unknown"
        earlier = "earlier day" in where  # the same CPU type, slower on that day: hollow
        x, y = r[axis.key], r["int8"] * 100
        ax.scatter(x, y, s=marker_radius(r) ** 2 * 4, facecolors="none" if earlier else colours[where],
                   edgecolors=colours[where], label=where)
        label = f"{r['preset']} ({r['name']})" if r.get("preset") else r["name"]
        if axis.label_all or round(x, 1) not in labelled:
            points.append((x, y, marker_radius(r), label, "#999999" if earlier else "black"))
            labelled.add(round(x, 1))
    peer = [(axis.peer, PEER["accuracy"] * 100, 4, PEER["name"], "#e45756")] if axis.peer else []
    if axis.peer:
        ax.scatter(axis.peer, PEER["accuracy"] * 100, marker="x", color="#e45756", s=60)
    else:  # no figure of the peer on this axis: its accuracy as a line
        ax.axhline(PEER["accuracy"] * 100, color="#e45756", linestyle=":", linewidth=0.8)
        ax.annotate(f"{PEER['name']}: {PEER['accuracy']:.1%}", (1, PEER["accuracy"] * 100), xycoords=("axes fraction",
                    "data"), xytext=(-3, 3), textcoords="offset points", ha="right", fontsize=7, color="#e45756")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    ax.set(xscale="log", xlabel=axis.label, ylabel="PublicTest accuracy, int8, %", title=axis.title)
    ax.grid(alpha=0.3, which="both")
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))  # 0.4, not 4x10^-1
    # minor ticks only where their labels do not crowd on a log axis (0.6-0.9 would run together)
    ax.xaxis.set_minor_locator(ticker.LogLocator(subs=(2, 3, 4, 5, 7)))
    ax.xaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
    ax.margins(x=0.25, y=0.15)  # room for the labels of the outermost points
    draw_targets(ax, axis)
    place_labels(ax, [*points, *peer])
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def draw_targets(ax: plt.Axes, axis: Axis) -> None:
    """Each target's corner, shaded: at least this accurate, at most this costly; the highest stays in view."""
    xlim, ylim = ax.get_xlim(), ax.get_ylim()
    xlim = (min(xlim[0], min(t[2] for t in axis.targets) / 1.5), xlim[1])
    ylim = (ylim[0], max(ylim[1], max(t[1] for t in axis.targets) + 1))
    for i, (name, accuracy, most, colour) in enumerate(axis.targets):
        ax.plot([xlim[0], most, most], [accuracy, accuracy, ylim[1]], color=colour, linestyle="--", linewidth=0.8)
        ax.fill_between([xlim[0], most], accuracy, ylim[1], color=colour, alpha=0.06, linewidth=0)
        above = any(t[1] == accuracy for t in axis.targets[:i])  # a second target on one line: its note above it
        ax.annotate(f"{name}: >= {accuracy:g} %, <= {most:g} {axis.unit}", (xlim[0], accuracy),
                    textcoords="offset points", xytext=(3, 3 if above else -3), va="bottom" if above else "top",
                    fontsize=7, color=colour)
    ax.set(xlim=xlim, ylim=ylim)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    parser.add_argument("--out", default="reports/fer2013")
    parser.add_argument("--fresh", action="store_true", help="forget the rows of earlier stores")
    args = parser.parse_args()
    out = Path(args.out)
    previous = out.with_suffix(".json")
    earlier = [] if args.fresh or not previous.exists() else [
        migrated(r) for r in json.loads(previous.read_text())["rows"]]
    rows = merge(collect(mlflow.MlflowClient(args.tracking_uri)), earlier)
    if not rows:
        raise SystemExit(f"error: no finished FER2013 runs at {args.tracking_uri} (and none in {previous})")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(previous, {"rows": rows, "seeds": seed_groups(rows)})
    write_table(rows, out.with_suffix(".md"))
    write_chart(rows, out.with_name(out.name + "-zoo.png"))
    write_chart(rows, out.with_name(out.name + "-macs.png"), MACS)
    print(f"{len(rows)} runs -> {out.with_suffix('.md')}, {out.with_name(out.name + '-zoo.png')}, "
          f"{out.with_name(out.name + '-macs.png')}")


if __name__ == "__main__":
    main()
