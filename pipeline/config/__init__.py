"""Typed schemas for params.yaml and the loader every stage starts with.

`dvc exp run` composes the Hydra tree in `conf/` into `params.yaml`; plain `dvc repro` reads the committed
file. Either way the stages only ever see `params.yaml`, so this is where a typo must be caught: before a
two-hour training, not after it. The YAML files in `conf/` hold the values (one source of defaults); the
dataclasses below hold only types and bounds, so a missing key is an error rather than a silent default.

Errors come out as one line naming the file and the dotted key, e.g.
``params.yaml: train.lr = -1.0: must be > 0``.

The package in parts: `schemas` (one dataclass per section), `loading` (params.yaml -> `Params`),
`compose` (Hydra, and the CLI that writes params.yaml); the validation toolkit itself is
pipeline/inference/schema.py, shared with the runner. Stages import what they need from here.
"""

from pipeline.config.composition import CONF_DIR, compose
from pipeline.config.loading import PARAMS_FILE, load_params, parse_params
from pipeline.config.schemas import *  # noqa: F403 (the sections' types, as every stage names them)
from pipeline.inference.schema import ConfigError

__all__ = ["CONF_DIR", "PARAMS_FILE", "ConfigError", "compose", "load_params", "parse_params"]
