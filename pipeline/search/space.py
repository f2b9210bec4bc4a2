"""The search space against the composed config: each key's Optuna distribution, or a one-line error.

Everything is checked before the first trial: a bad range, a key that is not in the config, a type that does
not fit the key's value, and a value at an end of the range that the stage schemas reject (composed and
validated like a stage would), so no `dvc exp run` is spent on a space that cannot work.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from pipeline import artifacts
from pipeline.config import CONF_DIR, ConfigError, Params, compose, parse_params
from pipeline.flatparams import override_value
from pipeline.inference.errors import first_line
from pipeline.search.preset import GROUP, ParamType, SearchConfig, SpaceParam


def base_config(cfg: SearchConfig, conf_dir: Path = CONF_DIR) -> tuple[DictConfig, Params]:
    """The config every trial starts from (conf/ plus the fixed overrides), raw and validated."""
    try:
        raw = compose(list(cfg.overrides), conf_dir=conf_dir)
        return raw, parse_params(raw)
    except ConfigError as e:
        raise ConfigError(f"{GROUP}.overrides: {e}") from None
    except Exception as e:
        raise ConfigError(f"{GROUP}.overrides = {list(cfg.overrides)}: {first_line(e)}") from None


def config_groups(conf_dir: Path = CONF_DIR) -> dict[str, list[str]]:
    """The Hydra groups a trial may pick an option of (`model`, `experiment`, ...) and their options."""
    return {d.name: sorted(p.stem for p in d.glob("*.yaml"))
            for d in sorted(conf_dir.iterdir()) if d.is_dir() and d.name != GROUP}


def _check_range(key: str, p: SpaceParam) -> None:
    if p.choices is not None:
        raise ConfigError(f"{key}.choices: only for type categorical (type is {p.type!s})")
    if p.low is None or p.high is None:
        raise ConfigError(f"{key}: type {p.type!s} needs low and high")
    if p.low > p.high:
        raise ConfigError(f"{key}: low = {p.low:g} > high = {p.high:g}")
    if p.log and p.low <= 0:
        raise ConfigError(f"{key}: log = true needs low > 0 (low = {p.low:g})")
    if p.step is not None and (p.step <= 0 or p.log):
        raise ConfigError(f"{key}.step = {p.step:g}: must be > 0, and not combined with log = true")
    if p.type == ParamType.int:
        for name in ("low", "high", "step"):
            if (value := getattr(p, name)) is not None and not float(value).is_integer():
                raise ConfigError(f"{key}.{name} = {value:g}: must be a whole number for type int")


def _check_choices(key: str, p: SpaceParam) -> None:
    extra = [n for n in ("low", "high", "step") if getattr(p, n) is not None] + (["log"] if p.log else [])
    if extra:
        raise ConfigError(f"{key}.{extra[0]}: not used by type categorical (it takes choices)")
    if not p.choices:
        raise ConfigError(f"{key}: type categorical needs a non-empty list of choices")
    if bad := [c for c in p.choices if not isinstance(c, str | int | float | bool | None)]:
        raise ConfigError(f"{key}.choices: {bad[0]!r}: each choice must be a number, string, boolean or null")


def distribution(key: str, p: SpaceParam) -> BaseDistribution:
    """The Optuna distribution of one space entry, or a one-line ConfigError naming `key`."""
    if p.type == ParamType.categorical:
        _check_choices(key, p)
        return CategoricalDistribution(list(p.choices or []))
    _check_range(key, p)
    assert p.low is not None and p.high is not None
    if p.type == ParamType.int:
        return IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
    return FloatDistribution(float(p.low), float(p.high), log=p.log, step=p.step)


def candidates(dist: BaseDistribution) -> list[Any]:
    """The values whose validity stands for the whole range: its ends, or every choice."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    return [dist.low, dist.high]  # type: ignore[attr-defined]


def _check_key(key: str, p: SpaceParam, base: DictConfig, groups: dict[str, list[str]]) -> None:
    """The key exists in the composed config (or is a config group) and takes values of the space's type."""
    if key in groups:
        if p.type != ParamType.categorical:
            raise ConfigError(f"{key}: a config group: type must be categorical, its choices among "
                              f"{', '.join(groups[key])}")
        if unknown := [c for c in p.choices or [] if c not in groups[key] and not (key == "experiment" and c is None)]:
            raise ConfigError(f"{key}.choices: {unknown[0]!r}: no conf/{key}/{unknown[0]}.yaml "
                              f"(options: {', '.join(groups[key])})")
        return
    value = OmegaConf.select(base, key, default=KeyError)
    if value is KeyError:
        flat = list(_leaf_keys(base))
        near = difflib.get_close_matches(key, flat, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ConfigError(f"{key}: unknown key: not in the composed config{hint}")
    if isinstance(value, DictConfig):
        raise ConfigError(f"{key}: a section, not a value: search one of its keys, e.g. {key}.{next(iter(value))}")
    if p.type != ParamType.categorical and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigError(f"{key}: type {p.type!s} for a {type(value).__name__} value ({value!r}): "
                          "use type categorical")
    if p.type == ParamType.float and isinstance(value, int) and not isinstance(value, bool):
        raise ConfigError(f"{key}: type float for a whole-number key ({value!r}): use type int")


def _leaf_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for k, v in cfg.items():
        keys += _leaf_keys(v, f"{prefix}{k}.") if isinstance(v, DictConfig) else [f"{prefix}{k}"]
    return keys


def _check_values(key: str, dist: BaseDistribution, cfg: SearchConfig, base: DictConfig, conf_dir: Path) -> None:
    """Compose a trial's config at each end of the range (each choice) and validate it like a stage would."""
    for value in candidates(dist):
        try:
            if key in config_groups(conf_dir):
                parse_params(compose([*cfg.overrides, f"{key}={override_value(value)}"], conf_dir=conf_dir))
            else:
                trial = base.copy()
                OmegaConf.update(trial, key, value, merge=False)
                parse_params(trial)
        except ConfigError as e:
            raise ConfigError(f"{key}: the value {override_value(value)} fails validation: {e}") from None
        except Exception as e:
            raise ConfigError(f"{key}: the value {override_value(value)} fails validation: {first_line(e)}") from None


def check_space(cfg: SearchConfig, conf_dir: Path = CONF_DIR) -> dict[str, BaseDistribution]:
    """Validate the search space against the composed config; return each key's Optuna distribution.

    One-line `ConfigError`s name the key: a bad range (low > high, log with low <= 0), a key that is not in
    the config composed from conf/ and the fixed overrides, a key also fixed by the overrides, a type that
    does not fit the key's value, a value at an end of the range that the stage schemas reject, or a val
    objective with trials that train on val.
    """
    if not cfg.space:
        raise ConfigError(f"{GROUP}.space: empty: name at least one key to search")
    if cfg.objective_file not in artifacts.metrics_files():
        raise ConfigError(f"{GROUP}.metrics_file = {cfg.metrics_file}: must be one of the stages' metrics files "
                          f"({', '.join(map(str, artifacts.metrics_files()))})")
    base, params = base_config(cfg, conf_dir)
    if cfg.metric.startswith("val/") and params.train.include_val:
        raise ConfigError(f"{GROUP}.metric = {cfg.metric}: the trials fit on train + val (train.include_val = true) "
                          f"and have no val figure: add train.include_val=false and train.keep_best=true to "
                          f"{GROUP}.overrides")
    groups = config_groups(conf_dir)
    fixed = {o.split("=", 1)[0].lstrip("+~") for o in cfg.overrides}
    distributions = {}
    for key, p in cfg.space.items():
        where = f"{GROUP}.space.{key}"
        if key in fixed:
            raise ConfigError(f"{where}: also fixed in {GROUP}.overrides: drop one of them")
        try:
            distributions[key] = distribution(key, p)
            _check_key(key, p, base, groups)
            _check_values(key, distributions[key], cfg, base, conf_dir)
        except ConfigError as e:
            raise ConfigError(f"{GROUP}.space.{e}") from None
    return distributions


def trial_overrides(cfg: SearchConfig, params: dict[str, Any]) -> list[str]:
    """The Hydra overrides of one trial: the fixed ones, then each sampled value in override syntax."""
    return [*cfg.overrides, *(f"{key}={override_value(value)}" for key, value in params.items())]
