"""NLQ training engine, inference and the checkpoint mode of tools/eval_nlq.py on a tiny
generated data set (preset=tiny: small layers, CPU)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from episodic.cli import exit_status
from episodic.distributed import DistInfo
from episodic.errors import DataError
from episodic.io import read_json
from nlq.data.annotations import load_nlq_annotations
from nlq.data.labels import is_naq_query
from nlq.data.synthetic import generate_nlq
from nlq.engine.build import build_nlq_model, build_train_loader, build_training_data, resolve_train_config
from nlq.engine.inference import evaluate_checkpoint
from nlq.engine.optim import WarmupLinearSchedule, build_optimizer
from nlq.engine.trainer import train, train_one_epoch
from nlq.evaluation.scoring import score_predictions_file
from nlq.evaluation.submission import read_predictions, validate_submission

REPO = Path(__file__).resolve().parents[2]
TINY_DATA = dict(n_train_clips=2, n_val_clips=2, n_test_clips=1, n_moments_clips=2, clip_duration=(30.0, 40.0),
                 feature_dim=24, clip_feature_dim=12, queries_per_clip=(6, 8))
METRIC_KEYS = {"R@1_IoU0.3", "R@1_IoU0.5", "R@5_IoU0.3", "R@5_IoU0.5", "mIoU", "MR@1", "MR@5", "num_evaluated", "num_gt"}


def train_config(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "configs" / "nlq"), version_base="1.3"):
        return compose(config_name="train", overrides=["preset=tiny", "num_workers=0", *overrides])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nlq_tiny")
    generate_nlq(root, seed=3, **TINY_DATA)
    return root


@pytest.fixture(scope="module")
def joint_run(data_root, tmp_path_factory) -> tuple[Path, Path, dict]:
    """vslnet joint stage, 1 epoch, NaQ file built into its own path: (run dir, naq file, summary)."""
    out = tmp_path_factory.mktemp("joint")
    naq_file = out.parent / f"{out.name}_naq.json"
    summary = train(train_config("model=vslnet", "stage=joint", f"data.root={data_root}", f"output_dir={out}",
                                 "max_epochs=1", f"naq_file={naq_file}"))
    return out, naq_file, summary


def test_presets_resolve_per_model_and_stage():
    cfg = resolve_train_config(train_config("preset=paper", "model=vslnet", "stage=joint"))
    assert (cfg.batch_size, cfg.lr, cfg.grad_clip, cfg.weight_decay) == (2048, 1e-3, 1.0, 0.01)
    assert cfg.data.max_len == 128 and list(cfg.data.features.names) == ["synthetic"]
    assert cfg.schedule_epochs == cfg.max_epochs
    cfg = resolve_train_config(train_config("preset=paper", "model=reler", "stage=finetune", "init=x.pth",
                                            "batch_size=8"))
    assert (cfg.batch_size, cfg.lr, cfg.grad_clip) == (8, 1e-5, 0.1)  # explicit values win over the preset
    assert cfg.data.max_len == 600 and list(cfg.data.features.names) == ["synthetic", "synthetic_clip"]
    assert resolve_train_config(cfg) == cfg  # idempotent
    with pytest.raises(DataError, match="init="):
        resolve_train_config(train_config("stage=finetune"))


def test_warmup_linear_schedule():
    schedule = WarmupLinearSchedule.from_fraction(1e-3, total_steps=200, warmup_fraction=0.025)
    assert schedule.warmup_steps == 5
    lrs = [schedule.lr(s) for s in range(200)]
    assert lrs[0] == pytest.approx(2e-4) and lrs[4] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:5], lrs[1:5])) and all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert schedule.lr(200) == 0.0


@pytest.mark.parametrize("model_name", ["vslnet", "reler"])
def test_few_steps_reduce_loss(data_root, model_name):
    torch.manual_seed(0)
    no_dropout = ["model.input_dropout=0.0", "model.predictor_dropout=0.0"] if model_name == "reler" else []
    cfg = resolve_train_config(train_config(f"model={model_name}", "stage=nlq_only", f"data.root={data_root}",
                                            "model.dropout=0.0", *no_dropout))
    data = build_training_data(cfg)
    model = build_nlq_model(cfg.model, cfg.text_encoder, sum(data.train.features.dims), train_texts=data.train_texts)
    loader, _ = build_train_loader(data.train, model.text_encoder.tokenizer, 16, 0, 0,
                                   DistInfo(0, 1, 0, torch.device("cpu")))
    batch = next(iter(loader))

    def loss() -> float:
        torch.manual_seed(1)  # same ReLER scale K for both measurements
        model.train()
        with torch.no_grad():
            return float(model(batch)["loss"])

    before = loss()
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    schedule = WarmupLinearSchedule(base_lr=2e-3, total_steps=100)
    means, step = train_one_epoch(model, [dict(batch) for _ in range(12)], optimizer, schedule, torch.device("cpu"),
                                  global_step=0, grad_clip=cfg.grad_clip)
    assert step == 12 and set(means) >= {"loss"}
    assert loss() < 0.8 * before


def test_joint_stage_builds_naq_file_and_trains(joint_run, data_root):
    out, naq_file, summary = joint_run
    naq = load_nlq_annotations(naq_file)
    nlq_train = load_nlq_annotations(data_root / "v2/annotations/nlq_train.json")
    num_naq = sum(is_naq_query(q.query) for q in naq.queries())
    assert num_naq > 0 and len(naq.queries()) == len(nlq_train.queries()) + num_naq
    report = read_json(out / "data_report.json")
    assert report["naq_creation"]["outside_clips"] > 0  # narrations outside every clip are counted
    assert report["train"]["naq"] == num_naq and report["train"]["without_text"] >= 1
    saved = OmegaConf.load(out / "config.yaml")
    assert saved.batch_size == 32 and saved.stage.name == "joint" and saved.naq_file == str(naq_file)
    assert (out / "model_best.pth").is_file() and (out / "last_checkpoint").read_text().strip() == "model_0001.pth"
    assert summary["epochs"] == 1 and summary["best_epoch"] == 1
    assert any((out / "tensorboard").iterdir())


def test_naq_only_stage_trains_on_narrations_only(joint_run, data_root):
    _, naq_file, _ = joint_run
    cfg = resolve_train_config(train_config("stage=naq_only", f"data.root={data_root}", f"naq_file={naq_file}"))
    data = build_training_data(cfg)
    assert len(data.train) > 0 and all(is_naq_query(q.query) for q in data.train.queries)
    assert not any(is_naq_query(q.query) for q in data.val.queries)


def test_finetune_starts_from_init(joint_run, data_root, tmp_path):
    joint_out, _, _ = joint_run
    init = torch.load(joint_out / "model_best.pth", weights_only=False)
    # lr 0: the fine-tuned weights must be exactly the init checkpoint's
    train(train_config("model=vslnet", "stage=finetune", f"data.root={data_root}", f"output_dir={tmp_path}",
                       "max_epochs=1", f"init={joint_out / 'model_best.pth'}", "lr=0.0"))
    tuned = torch.load(tmp_path / "model_best.pth", weights_only=False)
    assert tuned["config"]["stage"]["name"] == "finetune"
    assert tuned["model"].keys() == init["model"].keys()
    for key, value in init["model"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, tuned["model"][key]), key
    # the vocabulary (NLQ + NaQ words of the joint stage) is the init's, not NLQ train's
    assert tuned["model"]["text_encoder._extra_state"] == init["model"]["text_encoder._extra_state"]
    assert read_json(tmp_path / "data_report.json")["train"]["naq"] == 0


def test_resume_equals_uninterrupted(data_root, tmp_path):
    common = ["model=reler", "stage=joint", f"data.root={data_root}", f"naq_file={tmp_path / 'naq.json'}",
              "schedule_epochs=2", "seed=5"]
    train(train_config(*common, f"output_dir={tmp_path / 'a'}", "max_epochs=2"))
    train(train_config(*common, f"output_dir={tmp_path / 'b'}", "max_epochs=1"))  # "preempted" after 1 epoch
    summary = train(train_config(*common, f"output_dir={tmp_path / 'b'}", "max_epochs=2"))
    assert summary["epochs"] == 2
    a = torch.load(tmp_path / "a" / "model_0002.pth", weights_only=False)
    b = torch.load(tmp_path / "b" / "model_0002.pth", weights_only=False)
    for key, value in a["model"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b["model"][key]), key
    assert a["train_state"] == b["train_state"]


def test_bad_input_is_counted_and_eval_names_the_queries_of_a_clip_without_features(joint_run, data_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    annotations = root / "v2/annotations/nlq_train.json"
    raw = read_json(annotations)
    clips = [c for v in raw["videos"] for c in v["clips"]]
    first = next(q for q in clips[0]["annotations"][0]["language_queries"] if q.get("query"))
    first["clip_end_sec"] = first["clip_start_sec"]  # zero-length window
    annotations.write_text(json.dumps(raw))
    missing_clip = clips[1]["clip_uid"]
    (root / "v2/nlq_features/synthetic" / f"{missing_clip}.pt").unlink()
    cfg = resolve_train_config(train_config("model=vslnet", "stage=nlq_only", f"data.root={root}"))
    data = build_training_data(cfg)
    assert data.report["train"]["missing_feature_clips"] == 1
    assert data.report["train"]["missing_feature_examples"] == [missing_clip]
    assert data.report["train"]["dropped_short_window"] == 1
    assert all(q.clip_uid != missing_clip for q in data.train.queries) and len(data.train) > 0

    val_clip = read_json(root / "v2/annotations/nlq_val.json")["videos"][0]["clips"][0]["clip_uid"]
    (root / "v2/nlq_features/synthetic" / f"{val_clip}.pt").unlink()
    val_queries = load_nlq_annotations(root / "v2/annotations/nlq_val.json").queries()
    lost = [q for q in val_queries if q.clip_uid == val_clip and q.query]
    metrics = evaluate_checkpoint(joint_run[0] / "model_best.pth", root, "val", tmp_path / "eval", plot_queries=0)
    assert metrics["num_failed"] == len(lost) > 0  # the other clips are still evaluated
    assert {f["id"] for f in metrics["failed"]} == {f"{q.clip_uid}/{q.annotation_uid}/{q.query_idx}" for q in lost}
    assert all(val_clip in f["reason"] for f in metrics["failed"])  # the error names the clip's file
    assert metrics["complete"] is False and metrics["num_answered"] == metrics["num_queries"] - len(lost)
    assert read_json(tmp_path / "eval" / "metrics.json")["num_failed"] == len(lost)
    assert read_json(tmp_path / "eval" / "failures.json") == metrics["failed"]
    assert exit_status(metrics) == 3 and exit_status(metrics, allow_failures=True) == 0
    test_clip = read_json(root / "v2/annotations/nlq_test_unannotated.json")["videos"][0]["clips"][0]["clip_uid"]
    (root / "v2/nlq_features/synthetic" / f"{test_clip}.pt").unlink()
    with pytest.raises(DataError, match="no query has usable features"):  # its only clip: nothing to answer
        evaluate_checkpoint(joint_run[0] / "model_best.pth", root, "test_unannotated", tmp_path / "test",
                            plot_queries=0)


def _run_tool(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_tools_train_then_eval_checkpoint(data_root, tmp_path):
    out = tmp_path / "reler"
    stdout = _run_tool("tools/train_nlq.py", "preset=tiny", "model=reler", "stage=joint", f"data.root={data_root}",
                       f"output_dir={out}", "max_epochs=1", "num_workers=0", f"naq_file={tmp_path / 'naq.json'}")
    assert json.loads(stdout.strip().splitlines()[-1])["epochs"] == 1
    assert (out / "config.yaml").is_file() and (out / "model_best.pth").is_file()

    val = tmp_path / "eval_val"
    stdout = _run_tool("tools/eval_nlq.py", f"checkpoint={out / 'model_best.pth'}", f"data.root={data_root}",
                       "split=val", f"output_dir={val}")
    metrics = json.loads(stdout.strip().splitlines()[-1])
    assert METRIC_KEYS <= set(metrics) and metrics["num_evaluated"] > 0 and metrics["complete"] is True
    predictions = read_predictions(val / "predictions.json")
    assert all(len(p["predicted_times"]) == 5 for p in predictions)
    assert all(s <= e for p in predictions for s, e in p["predicted_times"])
    assert read_json(val / "metrics.json")["R@5_IoU0.3"] == metrics["R@5_IoU0.3"]
    rescored = score_predictions_file(data_root / "v2/annotations/nlq_val.json", val / "predictions.json", tmp_path)
    assert metrics["num_failed"] == 0 and metrics["failed"] == [] and not (val / "failures.json").exists()
    scored = {k: v for k, v in metrics.items() if k not in ("num_failed", "failed")}
    assert rescored == scored  # the metrics are those of the written file
    assert (val / "plots/timeline.png").stat().st_size > 0

    test = tmp_path / "eval_test"  # same library function as the tool's checkpoint mode, in-process
    counts = evaluate_checkpoint(out / "model_best.pth", data_root, "test_unannotated", test)
    assert not (test / "predictions.json").exists() and (test / "plots/timeline.png").is_file()
    test_annotations = load_nlq_annotations(data_root / "v2/annotations/nlq_test_unannotated.json")
    assert counts["num_results"] == len(test_annotations.queries()) > 0
    assert validate_submission(read_json(test / "submission.json"), test_annotations) == []


def test_autocast_modes():
    """amp=True is GPU-only; amp="bf16" also runs CPU matmuls in bf16; False is fp32."""
    from nlq.engine.inference import autocast

    cpu = torch.device("cpu")
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    for amp, dtype in ((True, torch.float32), (False, torch.float32), ("off", torch.float32),
                       ("bf16", torch.bfloat16)):
        with autocast(cpu, amp):
            assert (a @ b).dtype == dtype, amp
