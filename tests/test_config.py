"""Composition of every config option, and the one-line errors a typo or a bad value produces."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline.config import CONF_DIR, ConfigError, compose, load_params, parse_params
from pipeline.flatparams import preset_of, preset_params, to_flat_dict
from tests.conftest import params

# `experiment` holds presets; `search` is composed apart from params.yaml (pipeline/search/)
GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("experiment", "search"))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_validates(group: str, option: str) -> None:
    cfg = compose([f"{group}={option}"])
    parse_params(cfg)  # raises ConfigError on any problem
    chosen = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"))
    assert {k: cfg[group][k] for k in chosen} == chosen  # the option's own values, not the default's


@pytest.mark.parametrize("preset", options("experiment"))
def test_every_experiment_preset_composes_and_validates(preset: str) -> None:
    cfg = compose([f"experiment={preset}"])
    parse_params(cfg)
    # a preset is a short override file, not a copy of the whole config
    assert len((CONF_DIR / "experiment" / f"{preset}.yaml").read_text().splitlines()) < 60


def test_the_fer2013_presets_differ_where_their_comments_say() -> None:
    """fer2013_fast = fer2013 minus the zoom views; fer2013_seed = the seed's CNN as it was, same budget."""
    main, fast, seed = (params(f"experiment={p}") for p in ("fer2013", "fer2013_fast", "fer2013_seed"))
    assert (main.quantize.views.flip, main.quantize.views.zoom) == (True, 44)
    assert fast.quantize.views == dataclasses.replace(main.quantize.views, zoom=0)
    assert fast.model == main.model and fast.train == main.train  # one training serves both: views are export
    assert (seed.model.name, seed.quantize.views.flip, seed.quantize.views.zoom) == ("seed_cnn", False, 0)
    assert seed.train.time_budget_min == main.train.time_budget_min and seed.train.epochs == main.train.epochs


def test_committed_params_yaml_equals_default_composition() -> None:
    """Plain `dvc repro` reads params.yaml: it must be what `dvc exp run` would compose (`make params`)."""
    committed = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[1] / "params.yaml"))
    assert committed == OmegaConf.to_container(compose()), "params.yaml drifted from conf/: run `make params`"


def _broken(path: str, value: object) -> OmegaConf:
    # the other half of a combination that each value alone would pass
    context = {"quantize.register": ["quantize.variants=[int8]"],
               "train.time_budget_min": ["train.distribute=multi_worker"],
               "train.members": ["train.distribute=multi_worker"],
               "model.blocks": ["model=resnet_se"], "model.se_ratio": ["model=resnet_se"]}
    cfg = compose(context.get(path, []))
    OmegaConf.update(cfg, path, value, force_add=True)
    return cfg


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("train.lrr", 0.1, "train.lrr: unknown key (allowed in train: epochs, "),
    ("train.augment.zom", 0.1, "train.augment.zom: unknown key"),
    ("train.lr", "fast", "train.lr: Value 'fast' of type 'str' could not be converted to Float"),
    ("train.lr", -1.0, "train.lr = -1.0: must be > 0.0"),
    ("train.members", 0, "train.members = 0: must be >= 1"),
    ("data.val_fraction", 1.5, "data.val_fraction = 1.5: must be > 0.0 and < 1.0"),
    ("train.optimizer", "adamax", "train.optimizer: Invalid value 'adamax', expected one of [adam, adamw, sgd]"),
    ("train.distribute", "mirorred",
     "train.distribute: Invalid value 'mirorred', expected one of [none, mirrored, multi_worker]"),
    ("model.name", "resnet", "model.name = 'resnet': must be one of seed_cnn, convnet, resnet_se"),
    ("data.source", "imagenet", "data.source = 'imagenet': must be one of synthetic, fer2013, fer2013_csv"),
    ("model.filters", [16, "x"], "model.filters[1]: Value 'x' of type 'str' could not be converted to Integer"),
    ("model.convs", [2, 2], "model.convs = [2, 2]: must hold one count from 1 to 4 per stage (3 stages)"),
    ("model.blocks", [1, 1], "model.blocks = [1, 1]: must hold one count from 1 to 4 per stage (4 stages)"),
    ("model.se_ratio", -1, "model.se_ratio = -1: must be >= 0"),
    ("trian.epochs", 3, "trian: unknown section (allowed: data, model, train,"),
    # combinations that each value alone would pass, which would otherwise fail hours later
    ("quantize.register", "dynamic", "quantize.register = dynamic: must be one of quantize.variants"),
    ("quantize.variants", [], "quantize.variants = []: must list at least one of"),
    ("model.filters", [], "model.filters = []: must list at least one stage"),
    ("evaluate.baseline_samples", 0, "evaluate.floor = baseline: needs evaluate.baseline_samples > 0"),
    ("train.distill.teachers", ["models:/fer-expression-fer2013@champion"],
     "train.distill.teachers[0] = models:/fer-expression-fer2013@champion: must be models:/<name>/<version>"),
    ("train.distill.teachers", ["release:"], "train.distill.teachers[0] = release:: must be models:/<name>/<version>"),
    ("train.distill.teachers", ["release:fer-expression-fer2013-87c95f0d"], "train.distill.weight = 0.0: must be > 0"),
    ("train.distill.teachers", ["teacher:"], "train.distill.teachers[0] = teacher:: must be models:/<name>/<version>"),
    ("train.distill.teachers", ["teacher:intel-s7"], "train.distill.weight = 0.0: must be > 0"),
    ("train.time_budget_min", 470.0, "train.time_budget_min = 470: must be 0 with train.distribute = multi_worker"),
    ("train.members", 2, "train.members = 2: must be 1 with train.distribute = multi_worker"),
])
def test_bad_key_or_value_names_the_key(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_params(_broken(key, value))
    assert str(err.value).startswith(expected)
    assert "\n" not in str(err.value)


def test_missing_key_is_an_error_not_a_silent_default() -> None:
    cfg = compose()
    del cfg.train["epochs"]
    with pytest.raises(ConfigError, match=r"^train.epochs: .*missing"):
        parse_params(cfg)


def test_load_params_exits_with_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    cfg = compose()
    cfg.train.epochs = 0
    path.write_text(OmegaConf.to_yaml(cfg))
    with pytest.raises(SystemExit, match=r"^error: .*params.yaml: train.epochs = 0: must be >= 1$"):
        load_params(path)
    path.write_text("train: [unclosed")
    with pytest.raises(SystemExit, match="not valid YAML"):
        load_params(path)
    with pytest.raises(SystemExit, match="not found"):
        load_params(tmp_path / "missing.yaml")


def test_overrides_apply_on_top_of_params(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(OmegaConf.to_yaml(compose()))
    assert load_params(path, ["train.epochs=3"]).train.epochs == 3


def test_unknown_group_option_is_refused_by_composition() -> None:
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="seed_cnn"):
        compose(["model=resnet"])


def test_data_size_limits_must_leave_room() -> None:
    cfg = compose(["data=fer2013", "data.min_side=2000"])
    with pytest.raises(ConfigError, match=r"^data.min_side = 2000: must be <= data.max_side \(1024\)$"):
        parse_params(cfg)


def test_a_preset_that_does_not_compose_is_left_out_of_the_matching(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "experiment" / "broken.yaml").write_text("# @package _global_\ntrain:\n  lr: [not, a, number]\n")
    presets = preset_params(conf_dir=conf)
    assert "broken" not in presets and "tiny" in presets
    tiny = to_flat_dict(params("experiment=tiny", conf_dir=conf))
    assert preset_of(tiny, presets) == "tiny"


@pytest.mark.parametrize(("args", "expected"), [
    (["model=nonexistent"], "error: model=nonexistent: no such option in conf/model/ (options: fer_vgg, resnet_se, "
                            "seed_cnn, small_cnn)"),
    (["trian.lr=1"], "error: trian.lr=1: unknown key 'trian' (allowed in the top level: benchmark, data, evaluate, "
                     "mlflow, model, quantize, train)"),
    (["experiment=tiny", "train.augment.flipp=true"],
     "error: train.augment.flipp=true: unknown key 'train.augment.flipp' (allowed in train.augment: brightness, "
     "contrast, cutmix, erasing, flip, mixup, rotation, shift, zoom)"),
    (["train.lr=["], "error: train.lr=[: not an override of the form key=value (no viable alternative at input '[')"),
], ids=["unknown option", "misspelt section", "misspelt key", "unparsable"])
def test_the_config_cli_says_what_is_wrong_in_one_line(tmp_path: Path, monkeypatch, args: list[str],
                                                        expected: str) -> None:
    import sys

    from pipeline.config import composition as config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pipeline.config", *args])
    with pytest.raises(SystemExit) as stop:
        config.main()
    assert stop.value.code == expected
    assert not (tmp_path / "params.yaml").exists()


def test_the_config_cli_help_is_a_short_usage(tmp_path: Path, monkeypatch, capsys) -> None:
    import sys

    from pipeline.config import composition as config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pipeline.config", "--help"])
    config.main()
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m pipeline.config") and len(out.splitlines()) <= 5
    assert "groups: benchmark, data, evaluate, experiment, mlflow, model" in out
    assert not (tmp_path / "params.yaml").exists()
