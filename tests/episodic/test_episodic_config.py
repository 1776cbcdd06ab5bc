"""save_config / load_config / to_container."""
import pytest
from omegaconf import OmegaConf

from episodic.config import load_config, save_config, to_container
from episodic.errors import DataError


def test_save_config_writes_resolved_yaml_and_loads_back(tmp_path):
    cfg = OmegaConf.create({"data": {"root": "/data/ego4d", "clips": "${data.root}/v2/clips"}, "lr": 0.02})
    path = save_config(cfg, tmp_path / "run")
    assert path == tmp_path / "run" / "config.yaml"
    assert "${" not in path.read_text()
    loaded = load_config(tmp_path / "run")  # a folder means folder/config.yaml
    assert loaded.data.clips == "/data/ego4d/v2/clips" and loaded.lr == 0.02
    assert to_container(cfg) == {"data": {"root": "/data/ego4d", "clips": "/data/ego4d/v2/clips"}, "lr": 0.02}
    assert to_container({"a": 1}) == {"a": 1}


def test_save_config_accepts_plain_dict(tmp_path):
    save_config({"a": [1, 2]}, tmp_path)
    assert to_container(load_config(tmp_path / "config.yaml")) == {"a": [1, 2]}


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(DataError, match="bad.yaml"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(DataError, match="mapping"):
        load_config(listing)
