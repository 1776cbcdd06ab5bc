"""VQ2D training: detection AP, schedule, NaN handling, loss going down, exact resume,
missing frames, the tool (subprocess, resume) and DDP with 2 CPU processes (gloo)."""
from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from episodic.distributed import init_distributed
from vq2d.data.synthetic import generate_vq2d
from vq2d.engine import build
from vq2d.engine.optim import WarmupMultiStepLR, build_sgd, warmup_multistep_factor
from vq2d.engine.trainer import NonFiniteGuard, NonFiniteLossError, train, train_one_iteration
from vq2d.evaluation.detection_ap import FrameDetections, detection_ap
from vq2d.inference.checkpoint_io import load_detector
from vq2d.modeling.proposal_sampling import cross_batch_labels, sample_proposals

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "configs" / "vq2d"
TOOL = REPO / "tools" / "train_vq2d.py"
# small and fast: 64-px frames, batch 2, data loaded in the main process
FAST = ["preset=tiny", "threads=1", "data.num_workers=0", "model.min_size=[64]", "model.max_size=96",
        "batch_size=2", "samples.extra_references=2", "eval.max_queries=1", "eval.period=0", "log_period=1",
        "checkpoint.period=2", "solver.warmup_iters=2", "extract_workers=1"]
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SUBMITIT_EXECUTOR")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vq2d_train_data")
    generate_vq2d(root, seed=1, num_train_clips=2, num_val_clips=1, num_test_clips=1, frame_size=(160, 120),
                  frames_per_clip=(42, 48))
    return root


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    for key in LAUNCH_ENV:
        monkeypatch.delenv(key, raising=False)


def config(data_root: Path, output_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[*FAST, f"data.root={data_root}", f"output_dir={output_dir}", *overrides])


def run_tool(*args: str, torchrun: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env["OMP_NUM_THREADS"] = "1"
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun else []
    proc = subprocess.run([sys.executable, *launcher, str(TOOL), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


# ----------------------------------------------------------------------- detection AP
def test_detection_ap_perfect_and_with_negative_frames():
    gt = np.array([[10.0, 10.0, 50.0, 60.0]])
    perfect = [FrameDetections(gt + i, gt + i, np.array([0.9])) for i in range(4)]
    result = detection_ap(perfect)
    assert result["positive"] == {"AP": 100.0, "AP50": 100.0, "AP75": 100.0, "AR@10": 100.0}
    assert result["positive_negative"]["AP"] == 100.0
    confident_fp = FrameDetections(np.zeros((0, 4)), np.array([[0.0, 0.0, 20.0, 20.0]]), np.array([0.99]))
    with_negatives = detection_ap(perfect + [confident_fp])
    assert with_negatives["positive"]["AP"] == 100.0  # negative frames do not enter positive-only AP
    assert with_negatives["positive_negative"]["AP"] < 100.0
    assert (with_negatives["num_positive_frames"], with_negatives["num_negative_frames"]) == (4, 1)
    shifted = [FrameDetections(gt, gt + np.array([[0.0, 0.0, 30.0, 0.0]]), np.array([0.9]))]  # IoU 0.57
    partial = detection_ap(shifted)
    assert partial["positive"]["AP50"] == pytest.approx(100.0) and partial["positive"]["AP75"] == 0.0


def test_detection_ap_without_detections_or_positives():
    gt = np.array([[10.0, 10.0, 50.0, 60.0]])
    assert detection_ap([FrameDetections(gt, np.zeros((0, 4)), np.zeros(0))])["positive"]["AP"] == 0.0
    only_negative = detection_ap([FrameDetections(np.zeros((0, 4)), gt, np.array([0.5]))])
    assert math.isnan(only_negative["positive_negative"]["AP"])


# ------------------------------------------------------------------ optimiser, NaN loss
def test_warmup_multistep_schedule_and_parameter_groups(data_root, tmp_path):
    assert warmup_multistep_factor(0, [10, 20], 0.1, 5, 0.001) == pytest.approx(0.001)
    assert warmup_multistep_factor(5, [10, 20], 0.1, 5, 0.001) == 1.0
    assert warmup_multistep_factor(15, [10, 20], 0.1, 5, 0.001) == pytest.approx(0.1)
    assert warmup_multistep_factor(20, [10, 20], 0.1, 5, 0.001) == pytest.approx(0.01)
    cfg = config(data_root, tmp_path, "solver.lr_backbone=0.002")  # the seed paper's two lrs
    model = build.build_training_model(cfg)
    optimizer = build.build_optimizer(cfg, model)
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == {"head": 0.02, "backbone": 0.002}
    scheduler = WarmupMultiStepLR(optimizer, milestones=[3], warmup_iters=0)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.002)
    restored = WarmupMultiStepLR(build.build_optimizer(cfg, model), milestones=[3], warmup_iters=0)
    restored.load_state_dict(scheduler.state_dict())
    assert restored.last_epoch == 3
    frozen = build.build_training_model(config(data_root, tmp_path, "model.freeze_backbone=true",
                                               "model.freeze_rpn=true"))
    assert [g["name"] for g in build_sgd(frozen, lr_head=0.02, lr_backbone=0.002).param_groups] == ["head"]


class _NaNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2))

    def forward(self, images, crops, targets):
        return {"loss_siam": self.weight.sum() * float("nan")}

    def param_groups(self, lr_head, lr_backbone, weight_decay):
        return [{"name": "head", "params": [self.weight], "lr": lr_head, "weight_decay": weight_decay}]


def test_nonfinite_loss_is_skipped_then_aborts():
    model = _NaNModel()
    optimizer = build_sgd(model, lr_head=0.1, lr_backbone=0.1)
    batch = {"images": [torch.zeros(3, 8, 8)], "crops": torch.zeros(1, 3, 4, 4),
             "targets": [{"boxes": torch.zeros(0, 4)}]}
    guard = NonFiniteGuard(max_consecutive=3)
    for iteration in (1, 2):
        result = train_one_iteration(model, batch, optimizer, device=torch.device("cpu"))
        assert result.skipped and math.isnan(result.total)
        guard.update(result, iteration)
    assert torch.equal(model.weight.detach(), torch.ones(2))  # no update from a NaN loss
    assert guard.total == 2 and guard.consecutive == 2
    with pytest.raises(NonFiniteLossError, match="3 consecutive"):
        guard.update(result, 3)


# ------------------------------------------------------------------ samples -> model
def test_negative_frame_gives_only_negative_labels(data_root, tmp_path):
    cfg = config(data_root, tmp_path)
    samples, paths = build.build_samples(cfg, train=True)
    negative = next(i for i, s in enumerate(samples) if s.is_negative)
    positive = next(i for i, s in enumerate(samples) if not s.is_negative)
    mapper = build.build_mapper(cfg, paths.cache_root, train=True)
    boxes = [mapper(samples[i], i)["boxes"] for i in (positive, negative)]
    assert boxes[0].shape == (1, 4) and boxes[1].shape == (0, 4)
    proposals = [torch.tensor([[0.0, 0.0, 30.0, 30.0], [10.0, 10.0, 60.0, 50.0]])] * 2
    _, labels = sample_proposals(proposals, boxes, rois_per_image=8, positive_fraction=0.5, fg_iou_thresh=0.5)
    assert labels[1].sum() == 0 and labels[0].sum() >= 1  # the GT box is appended on the positive frame
    pair_labels, _ = cross_batch_labels(labels)
    assert pair_labels[1].sum() == 0  # the negative frame's query has no positive anywhere


def test_a_few_iterations_lower_the_loss(data_root, tmp_path):
    # the default head (residual block); the tiny preset's block-free head needs warmup + clipping
    cfg = config(data_root, tmp_path, "solver.warmup_iters=0", "model.head.num_residual_blocks=1")
    torch.manual_seed(0)
    info = init_distributed(device="cpu")
    samples, paths = build.build_samples(cfg, train=True)
    batch = next(iter(build.build_train_loader(cfg, samples, paths.cache_root, info, start=0)))
    model = build.build_training_model(cfg)
    optimizer = build.build_optimizer(cfg, model)
    totals = [train_one_iteration(model, batch, optimizer, device=info.device).total for _ in range(8)]
    assert all(math.isfinite(t) for t in totals)
    assert np.mean(totals[-3:]) < 0.9 * np.mean(totals[:2]), totals  # <= ~0.86 for seeds 0-5


# --------------------------------------------------------------------------- resume
def test_resume_gives_the_state_of_an_uninterrupted_run(data_root, tmp_path):
    common = ("max_iter=4", "eval.at_end=false")
    train(config(data_root, tmp_path / "straight", *common))
    train(config(data_root, tmp_path / "resumed", "max_iter=2", "eval.at_end=false"))
    assert (tmp_path / "resumed" / "last_checkpoint").read_text().strip() == "model_0000002.pth"
    summary = train(config(data_root, tmp_path / "resumed", *common))  # killed at 2, restarted
    assert summary["iteration"] == 4
    straight = torch.load(tmp_path / "straight" / "model_final.pth", weights_only=False)["model"]
    resumed = torch.load(tmp_path / "resumed" / "model_final.pth", weights_only=False)["model"]
    assert straight.keys() == resumed.keys()
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name
    initial = build.build_training_model(config(data_root, tmp_path))
    changed = sum(not torch.equal(v, straight[k]) for k, v in initial.state_dict().items())
    assert changed > 0  # training did move the weights


def test_missing_cached_frame_is_skipped_or_extracted(data_root, tmp_path, caplog):
    cfg = config(data_root, tmp_path)
    samples, paths = build.build_samples(cfg, train=True)  # extracts what is missing
    victim = samples[0]
    frame = paths.cache_root / victim.clip_uid / f"{victim.frame_number:06d}.jpg"
    frame.unlink()
    with caplog.at_level(logging.WARNING):
        kept, _ = build.build_samples(config(data_root, tmp_path, "extract_frames=false"), train=True)
    assert len(kept) < len(samples) and "missing from the frame cache" in caplog.text
    again, _ = build.build_samples(cfg, train=True)
    assert frame.is_file() and len(again) == len(samples)


# ------------------------------------------------------------------- tool and DDP
def test_tool_trains_writes_outputs_and_resumes(data_root, tmp_path):
    out = tmp_path / "run"
    args = [*FAST, f"data.root={data_root}", f"output_dir={out}"]
    run_tool(*args, "max_iter=2")
    for name in ("config.yaml", "last_checkpoint", "model_final.pth", "model_0000002.pth", "log.txt",
                 "detection_ap.json"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert "max_iter: 2" in (out / "config.yaml").read_text()
    ap = json.loads((out / "detection_ap.json").read_text())
    assert ap["iteration"] == 2 and set(ap["positive"]) == {"AP", "AP50", "AP75", "AR@10"}
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert set(final) >= {"model", "config"} and final["config"]["depth"] == 18
    model = load_detector(out / "model_final.pth")  # what the evaluation tool's checkpoint= does
    assert not model.training
    assert all(torch.equal(v, final["model"][k]) for k, v in model.state_dict().items())
    proc = run_tool(*args, "max_iter=3", "negatives=false")
    assert "resumed from" in proc.stdout and "positives" in proc.stdout and "negatives 0," in proc.stdout
    assert (out / "last_checkpoint").read_text().strip() == "model_0000003.pth"
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 3


def test_ddp_with_two_cpu_processes(data_root, tmp_path):
    out = tmp_path / "ddp"
    proc = run_tool(*FAST, f"data.root={data_root}", f"output_dir={out}", "max_iter=2", "device=cpu",
                    torchrun=True)
    assert "(1 per process x 2)" in proc.stdout
    ckpt = torch.load(out / "model_0000002.pth", weights_only=False)
    assert len(ckpt["rng"]) == 2 and ckpt["sampler"]["world_size"] == 2
    assert json.loads((out / "detection_ap.json").read_text())["num_positive_frames"] > 0
