"""The NaQ two-stage recipe through a real SLURM (scripts/naq_vslnet.sh, scripts/naq_reler.sh with
LAUNCHER=slurm, on CPU): the joint stage is one job, the fine-tuning stage a second job that
waits for it (``--dependency=afterok:<joint job>``), then val metrics and the test submission."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from slurm_jobs import run_script

pytestmark = pytest.mark.slurm

CPU_JOB = ["device=cpu", "launcher.gpus_per_node=0", "launcher.cpus_per_task=1", "launcher.mem_gb=2",
           "max_epochs=1", "num_workers=0"]


@pytest.fixture(scope="module")
def nlq_root(tmp_path_factory) -> Path:
    from nlq.data.synthetic import generate_nlq

    root = tmp_path_factory.mktemp("slurm_nlq")
    generate_nlq(root, seed=3, n_train_clips=2, n_val_clips=2, n_test_clips=1, n_moments_clips=2,
                 clip_duration=(30.0, 40.0), feature_dim=24, clip_feature_dim=12, queries_per_clip=(6, 8))
    return root


@pytest.mark.parametrize("model", ["vslnet", "reler"])
def test_naq_recipe_chains_stage_two_after_stage_one(slurm_cluster, nlq_root, tmp_path, model):
    out = tmp_path / model
    proc = run_script(slurm_cluster, f"naq_{model}.sh", *CPU_JOB, timeout=500, LAUNCHER="slurm", PARTITION="debug",
                      PRESET="tiny", ROOT=str(nlq_root), OUT=str(out))
    joint_job = re.search(r"joint stage is SLURM job (\d+)", proc.stdout).group(1)
    joint_sbatch = next((out / "joint" / "submitit").rglob("*_submission.sh")).read_text()
    finetune_sbatch = next((out / "finetune" / "submitit").rglob("*_submission.sh")).read_text()
    assert "--dependency" not in joint_sbatch and "--partition=debug" in joint_sbatch
    assert f"#SBATCH --dependency=afterok:{joint_job}" in finetune_sbatch
    assert "#SBATCH --kill-on-invalid-dep=yes" in finetune_sbatch
    # stage 2 started from stage 1's best model, in its own job
    finetune_config = (out / "finetune" / "config.yaml").read_text()
    assert f"init: {out / 'joint' / 'model_best.pth'}" in finetune_config
    assert (out / "joint" / "model_best.pth").is_file() and (out / "finetune" / "model_best.pth").is_file()
    metrics = json.loads((out / "eval_val" / "metrics.json").read_text())
    assert metrics["num_evaluated"] > 0
    assert (out / "eval_test" / "submission.json").is_file()
