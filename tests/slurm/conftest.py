"""The ``slurm`` test group: the cluster scripts against a real single-node SLURM (cluster.py).

Run it alone, in one process (``make test`` does): ``pytest -m slurm tests/slurm``. Where
SLURM and munge are not installed the group is skipped, and the skip is announced in the
summary; ``.ci/run`` installs them, so CI runs it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import SlurmCluster, unavailable_reason  # noqa: E402

_SKIPPED: list[str] = []
# a tiny random-init detector saved as the trainer's model_final.pth (what evaluation reads)
TINY_MODEL = {"depth": 18, "fpn_channels": 16, "min_size": [64], "max_size": 96, "crop_size": 32,
              "rpn": {"pre_nms_top_n_test": 40, "post_nms_top_n_test": 16},
              "head": {"hidden_size": 32, "num_residual_blocks": 1, "pooler_resolution": 7}}


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: needs a real SLURM (tests/slurm/cluster.py); run alone: "
                                       "pytest -m slurm tests/slurm")


def pytest_terminal_summary(terminalreporter):
    if _SKIPPED:
        line = "=" * 100
        terminalreporter.write_line(f"{line}\nSLURM TEST GROUP SKIPPED: {_SKIPPED[0]}\n{line}", red=True, bold=True)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> SlurmCluster:
    """A running single-node SLURM (partition ``debug``); ``SLURM_CONF`` is set for the session."""
    reason = unavailable_reason()
    if reason:
        _SKIPPED.append(reason)
        pytest.skip(f"SLURM TEST GROUP SKIPPED: {reason}")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        cluster.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


@pytest.fixture(scope="session")
def vq2d_data(tmp_path_factory) -> Path:
    """A tiny synthetic VQ2D split (``data/``) and a random-init tiny ``model_final.pth``."""
    from vq2d.data.synthetic import generate_vq2d
    from vq2d.engine.build import final_state
    from vq2d.modeling.build import build_model

    root = tmp_path_factory.mktemp("slurm_vq2d")
    generate_vq2d(root / "data", seed=3, preset="small", num_train_clips=2, num_val_clips=2, num_test_clips=1,
                  frame_size=(96, 64), frames_per_clip=(30, 40), invalid_prob=0.0)
    torch.manual_seed(0)
    torch.save(final_state(build_model(TINY_MODEL), TINY_MODEL, iteration=0), root / "model_final.pth")
    return root
