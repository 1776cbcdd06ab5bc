"""NLQ inference: top-k windows (seconds) per query, and the checkpoint mode of tools/eval_nlq.py.

:func:`predict` runs a model over a loader and returns one plain result per query
(``{"key": NLQKey, "windows": [[s, e] x 5], "scores": [5]}``). :func:`evaluate_checkpoint`
rebuilds a model from a training checkpoint (weights + resolved config), predicts a split,
writes the challenge file FIRST and then scores that file (STYLE 5).
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from episodic import distributed
from episodic.errors import DataError
from episodic.io import atomic_write_json, atomic_write_text, read_json
from episodic.logging import progress
from nlq.data.annotations import NLQAnnotationFile, NLQKey
from nlq.data.dataset import NLQCollator, NLQDataset
from nlq.engine.build import build_features, build_nlq_model, checkpoint_model_state, data_config, load_queries
from nlq.evaluation.plots import plot_timelines
from nlq.evaluation.scoring import default_annotations_path, score_options, score_predictions_file
from nlq.evaluation.submission import build_submission, validate_submission, write_submission

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.json"  # val: the file that is scored
SUBMISSION_FILE = "submission.json"  # test_unannotated: the challenge submission
FAILURES_FILE = "failures.json"  # queries not answered (no usable features) and why
TIMELINE_PLOT = "plots/timeline.png"
EVAL_CONFIG_FILE = "eval_nlq_config.yaml"


def autocast(device: torch.device, amp: bool | str) -> contextlib.AbstractContextManager:
    """Mixed precision of a forward pass.

    amp: True / "auto" -> bf16 autocast on GPU, fp32 on CPU; "bf16" -> bf16 autocast on CPU
    too (CPUs with AVX-512-BF16 or AMX: ~1.5x faster VSLNet inference); False / "off" -> fp32.
    """
    if amp in (False, None, "off"):
        return contextlib.nullcontext()
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    if amp == "bf16":
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def move_to_device(batch: dict, device: torch.device) -> dict:
    """Tensors of a batch (also inside the ``text`` dict) moved to ``device``; the rest kept."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.to(device, non_blocking=True)
        elif isinstance(value, dict):
            out[key] = move_to_device(value, device)
        else:
            out[key] = value
    return out


class UnlabelledSamples(Dataset):
    """Evaluation view of an :class:`NLQDataset`: samples without GT fields, so queries with
    and without windows can share a batch (inference needs only video, text, duration)."""

    def __init__(self, dataset: NLQDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        sample = self.dataset[index]
        sample.update(window=None, start_label=None, end_label=None, highlight_label=None)
        return sample


def build_eval_loader(dataset: NLQDataset, tokenize, batch_size: int, num_workers: int = 0,
                      shard: bool = True) -> DataLoader:
    """Sequential loader over ``dataset``; in DDP (``shard``) each process gets every
    world_size-th sample (the last ones are repeated to even out; :func:`gather_results` dedupes)."""
    sampler = None
    if shard and distributed.get_world_size() > 1:
        sampler = DistributedSampler(dataset, num_replicas=distributed.get_world_size(),
                                     rank=distributed.get_rank(), shuffle=False)
    return DataLoader(UnlabelledSamples(dataset), batch_size=batch_size, sampler=sampler, shuffle=False,
                      num_workers=num_workers, collate_fn=NLQCollator(tokenize), persistent_workers=num_workers > 0)


@torch.inference_mode()
def predict(model: nn.Module, loader: Iterable[dict], device: torch.device, amp: bool | str = False,
            desc: str = "inference") -> list[dict]:
    """Per-query results ``{"key", "windows": [[s, e] x k], "scores": [k]}`` in loader order
    (the model's eval-mode output plus the query key)."""
    model.eval()
    results = []
    for batch in progress(loader, desc=desc, leave=False):
        keys = batch.pop("keys")
        with autocast(device, amp):
            outputs = model(move_to_device(batch, device))
        for key, out in zip(keys, outputs):
            results.append({"key": NLQKey(*key), "windows": out["windows"], "scores": out["scores"]})
    return results


def gather_results(results: list[dict], order: list[NLQKey]) -> list[dict]:
    """Results of every process, one per key, in ``order`` (the dataset's query order)."""
    by_key = {}
    for part in distributed.all_gather_object(results):
        for result in part:
            by_key.setdefault(NLQKey(*result["key"]), result)
    return [by_key[key] for key in order if key in by_key]


def load_checkpoint_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, DictConfig, dict]:
    """(model in eval mode on ``device``, the run's resolved config, the checkpoint dict)."""
    state = checkpoint_model_state(path)
    cfg = OmegaConf.create(state["config"])
    if cfg.model.name == "vslnet" and "architecture" not in cfg.model:  # saved before architecture existed
        cfg.model.architecture = "ours"
    model = build_nlq_model(cfg.model, cfg.text_encoder, int(state["video_dim"]), state_dict=state["model"])
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg, state


def _eval_dataset(run_cfg: DictConfig, data_root: str, annotations: Path,
                  feature_dims: list[int]) -> tuple[NLQDataset, NLQAnnotationFile]:
    """The checkpoint's data pipeline (feature sets, max_len, ...) on ``data_root``'s files,
    and the annotation file. A clip whose feature file is missing or wrongly shaped has its
    queries left out (``dataset.bad_feature_keys``: key -> error), not the whole split."""
    data = OmegaConf.to_container(run_cfg.data, resolve=True)
    data["root"] = str(data_root)
    resolved = data_config(data, {"eval": str(Path(annotations).resolve())})
    features = build_features(resolved)
    if features.dims != list(feature_dims):
        raise DataError(f"features {features.names} under {features.root} have dims {features.dims}, "
                        f"the checkpoint was trained on {list(feature_dims)}")
    annotation_file, queries, textless = load_queries(annotations)
    if textless:
        log.warning("%s: %d language queries without text (not predicted)", annotations, textless)
    dataset = NLQDataset(queries, features, max_len=resolved["max_len"], train=False, naq_expansion=None,
                         min_window_sec=resolved["min_window_sec"], name=Path(annotations).stem,
                         preparation=resolved["preparation"], skip_bad_features=True)
    if not dataset.queries:
        raise DataError(f"{annotations}: no query has usable features under {features.root} "
                        f"(e.g. {next(iter(dataset.bad_feature_keys.values()), 'no query with text')})")
    return dataset, annotation_file


def _failures(dataset: NLQDataset) -> list[dict]:
    """``[{"id": "clip_uid/annotation_uid/query_idx", "reason": ...}]`` of the queries left out."""
    return [{"id": f"{k.clip_uid}/{k.annotation_uid}/{k.query_idx}", "reason": reason}
            for k, reason in dataset.bad_feature_keys.items()]


def evaluate_checkpoint(checkpoint: str | Path, data_root: str | Path, split: str, output_dir: str | Path,
                        annotations: str | Path | None = None, batch_size: int = 64, num_workers: int = 0,
                        device: str | None = None, amp: bool | str = True, plot_queries: int = 6,
                        score_options: dict | None = None) -> dict:
    """Run a checkpoint on one split and write its outputs into ``output_dir``.

    Annotated splits (windows known, e.g. val): ``predictions.json`` (challenge format),
    then that file is scored -> ``metrics.json``; returns the metrics. Unannotated splits
    (test_unannotated): ``submission.json``, validated against the annotation file (every
    query answered once, 5 windows each; a problem is a DataError); returns its counts.
    Both: ``plots/timeline.png`` (predicted vs GT windows of a few queries). Queries of clips
    without usable features are not answered; they are counted and named (``num_failed``,
    ``failed``, also in ``failures.json``; tools/eval_nlq.py then exits 3) and the val file is
    scored as it is (as the scorer treats any file with unanswered queries: ``complete``
    false, the metrics over the answered ones, the unanswered named in its warning).
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    output_dir = Path(output_dir)
    annotations = Path(annotations) if annotations else default_annotations_path(data_root, split)
    model, run_cfg, state = load_checkpoint_model(checkpoint, dev)
    dataset, annotation_file = _eval_dataset(run_cfg, str(data_root), annotations, state["feature_dims"])
    loader = build_eval_loader(dataset, model.text_encoder.tokenizer, batch_size, num_workers, shard=False)
    results = predict(model, loader, dev, amp=amp, desc=f"predict {split}")
    annotated = any(q.window is not None for q in dataset.queries)
    path = output_dir / (PREDICTIONS_FILE if annotated else SUBMISSION_FILE)
    write_submission(build_submission(results), path)
    log.info("wrote %d predictions to %s", len(results), path)
    plot_timelines(results, dataset.queries, output_dir / TIMELINE_PLOT, max_queries=plot_queries)
    failed = _failures(dataset)
    if failed:
        atomic_write_json(output_dir / FAILURES_FILE, failed, indent=1)
        log.warning("%d queries not answered (no usable features), listed in %s", len(failed),
                    output_dir / FAILURES_FILE)
    else:
        (output_dir / FAILURES_FILE).unlink(missing_ok=True)  # an earlier run's list would be stale
    failures = {"num_failed": len(failed), "failed": failed}
    if annotated:
        return score_predictions_file(annotations, path, output_dir, **(score_options or {}), extra=failures)
    problems = validate_submission(read_json(path), annotation_file, unanswered=dataset.bad_feature_keys)
    if problems:
        raise DataError(f"{path}: invalid submission ({len(problems)} problems): " + "; ".join(problems[:5]))
    log.info("%s is a valid submission for %s%s", path, annotations,
             f" except the {len(failed)} failed queries" if failed else "")
    return {"num_queries": len(dataset.queries), "num_results": len(results), "submission_problems": 0, **failures}


def evaluate_checkpoint_from_config(cfg: Any) -> dict:
    """Checkpoint mode of ``tools/eval_nlq.py``: ``checkpoint``, ``data.root``, ``split``,
    ``output_dir`` (default: the checkpoint's folder / eval_<split>), ``annotations`` (default:
    the split's file under data.root). Saves the config beside the outputs."""
    output_dir = Path(cfg.output_dir) if cfg.output_dir else Path(cfg.checkpoint).resolve().parent / f"eval_{cfg.split}"
    result = evaluate_checkpoint(cfg.checkpoint, cfg.data.root, cfg.split, output_dir, annotations=cfg.annotations,
                                 batch_size=int(cfg.batch_size), num_workers=int(cfg.num_workers),
                                 device=cfg.device, amp=cfg.amp, plot_queries=int(cfg.plot_queries),
                                 score_options=score_options(cfg))
    atomic_write_text(output_dir / EVAL_CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    return result
