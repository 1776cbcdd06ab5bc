"""Config files: the merged config written next to every output, and read back."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from episodic.errors import DataError
from episodic.io import atomic_write_text

CONFIG_FILE = "config.yaml"


def to_container(cfg: Any) -> Any:
    """Plain python dicts/lists of a config, interpolations resolved (other values unchanged)."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    return cfg


def save_config(cfg: Any, output_dir: str | Path, name: str = CONFIG_FILE) -> Path:
    """Write the resolved ``cfg`` (DictConfig or dict) to ``output_dir/<name>`` atomically.

    Call it inside the hydra app so that ``${hydra:...}`` interpolations resolve. Tools whose
    output folder may be shared with another tool's (e.g. scoring into a training run's
    folder) pass their own ``name``.
    """
    if not isinstance(cfg, (DictConfig, ListConfig)):
        cfg = OmegaConf.create(cfg)
    path = Path(output_dir) / name
    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))
    return path


def load_config(path: str | Path) -> DictConfig:
    """Read a yaml config (e.g. a saved ``config.yaml``); a folder means ``folder/config.yaml``."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    if not path.is_file():
        raise DataError(f"{path}: config file not found")
    try:
        cfg = OmegaConf.load(path)
    except (OmegaConfBaseException, yaml.YAMLError) as e:
        raise DataError(f"{path}: malformed config: {e}") from None
    if not isinstance(cfg, DictConfig):
        raise DataError(f"{path}: expected a mapping at the top level, got a list")
    return cfg
