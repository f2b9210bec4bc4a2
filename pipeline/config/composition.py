"""Composing conf/ with Hydra exactly as `dvc exp run` does, and `python -m pipeline.config`, which writes the
composition to params.yaml (`make params`); Hydra's 60-line tracebacks become one line naming the override."""

from __future__ import annotations

import contextlib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline.config.loading import PARAMS_FILE, parse_params
from pipeline.inference.errors import first_line
from pipeline.inference.schema import ConfigError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose(overrides: list[str] | None = None, config_name: str = "config",
            conf_dir: Path = CONF_DIR) -> DictConfig:
    """Compose `conf/` exactly as `dvc exp run` does (Hydra compose, then resolve)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(conf_dir.resolve()), version_base=None):
        cfg = hydra_compose(config_name=config_name, overrides=overrides or [])
    OmegaConf.resolve(cfg)
    return OmegaConf.create(OmegaConf.to_container(cfg))  # plain, like a loaded params.yaml (not struct)


USAGE = """usage: python -m pipeline.config [key=value ...] [group=option ...]
Compose conf/ (Hydra) with the overrides and write params.yaml, as `make params` and `dvc exp run -S` do.
  groups: {groups}
  e.g.    python -m pipeline.config experiment=tiny train.lr=0.003"""


def composition_error(error: Exception, overrides: list[str]) -> str:
    """One line for an override that Hydra cannot compose (its own message is a traceback of ~60 lines): an
    unknown group option with the group's options, an unknown key with the keys allowed where it points, an
    override that does not parse."""
    from hydra.errors import MissingConfigException, OverrideParseException

    first = first_line(error)
    if isinstance(error, MissingConfigException) and "Could not find '" in first:
        group, _, option = first.split("Could not find '", 1)[1].rstrip("'").rpartition("/")
        options = sorted(f.stem for f in (CONF_DIR / group).glob("*.yaml"))
        return f"{group}={option}: no such option in conf/{group}/ (options: {', '.join(options)})"
    if isinstance(error, OverrideParseException):
        bad = next((o for o in overrides if o.split("=", 1)[0] in str(error) or o in str(error)), " ".join(overrides))
        return f"{bad}: not an override of the form key=value ({first})"
    full_key = getattr(error.__cause__, "full_key", None)
    if full_key:
        parent = str(full_key).rpartition(".")[0]
        where = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") == full_key or o.startswith(f"{full_key}.")]
        with contextlib.suppress(Exception):
            good = compose([o for o in overrides if o not in where])
            node = OmegaConf.select(good, parent) if parent else good
            allowed = ", ".join(sorted(str(k) for k in node))
            return (f"{' '.join(where) or full_key}: unknown key '{full_key}' "
                    f"(allowed in {parent or 'the top level'}: {allowed})")
    return f"{' '.join(overrides)}: {first}"


def main() -> None:
    """`python -m pipeline.config [overrides]`: regenerate params.yaml from conf/ (what `make params` runs)."""
    import sys

    from hydra.errors import HydraException

    from pipeline.files import write_text

    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        groups = sorted(d.name for d in CONF_DIR.iterdir() if d.is_dir())
        print(USAGE.format(groups=", ".join(groups)))
        return
    try:
        cfg = compose(sys.argv[1:])
    except HydraException as e:
        raise SystemExit(f"error: {composition_error(e, sys.argv[1:])}") from None
    try:
        parse_params(cfg)
    except ConfigError as e:
        raise SystemExit(f"error: conf/: {e}") from None
    write_text(PARAMS_FILE, OmegaConf.to_yaml(cfg))
    print(f"wrote {PARAMS_FILE} from {CONF_DIR}" + (f" with {' '.join(sys.argv[1:])}" if sys.argv[1:] else ""))
