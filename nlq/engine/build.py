"""Config -> training settings, datasets, data loaders and model: the one place a training
config is translated (configs/nlq/train.yaml).

:func:`resolve_train_config` fills every derived value (the preset's schedule for the model
and stage, the data's max_len and feature sets); the resolved config is what is saved as
``OUT/config.yaml`` and inside every checkpoint, so evaluation rebuilds the model and the
data pipeline from a checkpoint alone (:mod:`nlq.engine.inference`).
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from episodic import distributed
from episodic.errors import DataError
from episodic.io import read_json
from nlq.data.annotations import NLQAnnotationFile, NLQQuery, load_nlq_annotations
from nlq.data.augment import AUGMENT_DEFAULTS, build_augmentations
from nlq.data.dataset import EpochSampler, NLQCollator, NLQDataset, resolve_data_config
from nlq.data.features import FeatureStore
from nlq.data.labels import is_naq_query
from nlq.data.naq import check_clip_times, make_naq
from nlq.data.pooled_store import open_or_build_store
from nlq.models.build import build_model, build_text_encoder

log = logging.getLogger(__name__)

STAGE_QUERIES = ("nlq", "nlq+naq", "naq")  # stage.queries: NLQ train, NLQ + NaQ file, NaQ queries only
_SCHEDULE_KEYS = ("batch_size", "lr", "max_epochs")  # per model and stage in the preset
_MODEL_KEYS = ("weight_decay", "grad_clip")  # per model in the preset
# optional in the preset (per stage, else per model, else this default): older presets keep their behaviour
_OPTIONAL_KEYS = {"warmup_fraction": 0.025, "adam_eps": 1e-8, "no_decay": "ndim", "lr_decay": "linear",
                  "lr_drop_epochs": 0}


def _container(cfg: Any) -> dict:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    return dict(cfg)


def resolve_train_config(cfg: Any) -> DictConfig:
    """A copy of the training config with every null derived value filled in.

    batch_size, lr, max_epochs: ``schedule[model][stage]``; weight_decay, grad_clip:
    ``schedule[model]``; warmup_fraction, adam_eps, no_decay, lr_decay, lr_drop_epochs:
    ``schedule[model][stage]``, else ``schedule[model]``, else the old defaults (0.025, 1e-8,
    ndim, linear, 0); schedule_epochs: max_epochs; data.max_len: model.max_len;
    data.features.names: data.features.by_model[model]; each null of data.augment:
    ``schedule[model].augment`` (training augmentations, ReLER), else off
    (:data:`~nlq.data.augment.AUGMENT_DEFAULTS`). Checks the stage's needs (init).
    Idempotent.
    """
    out = _container(cfg)
    model_name, stage = out["model"]["name"], out["stage"]["name"]
    if out["stage"]["queries"] not in STAGE_QUERIES:
        raise ValueError(f"stage.queries must be one of {STAGE_QUERIES} (got {out['stage']['queries']!r})")
    table = out["schedule"].get(model_name)
    if table is None or stage not in table:
        raise KeyError(f"preset {out['schedule'].get('name')!r} has no schedule for model {model_name!r}, "
                       f"stage {stage!r}")
    for key in _SCHEDULE_KEYS:
        if out[key] is None:
            out[key] = table[stage][key]
    for key in _MODEL_KEYS:
        if out[key] is None:
            out[key] = table[key]
    for key, default in _OPTIONAL_KEYS.items():
        if out.get(key) is None:
            out[key] = table[stage].get(key, table.get(key, default))
    if out["schedule_epochs"] is None:
        out["schedule_epochs"] = out["max_epochs"]
    data = out["data"]
    if data["max_len"] is None:
        data["max_len"] = out["model"]["max_len"]
    if data["max_len"] > out["model"]["max_len"]:
        raise ValueError(f"data.max_len {data['max_len']} exceeds model.max_len {out['model']['max_len']}")
    if data["features"]["names"] is None:
        data["features"]["names"] = data["features"]["by_model"][model_name]
    augment, preset_augment = data.get("augment") or {}, table.get("augment") or {}
    for where, given in (("data.augment", augment), (f"schedule.{model_name}.augment", preset_augment)):
        unknown = sorted(set(given) - set(AUGMENT_DEFAULTS))
        if unknown:
            raise KeyError(f"unknown config key(s) {where}.{', '.join(unknown)} (known: {', '.join(AUGMENT_DEFAULTS)})")
    data["augment"] = {key: augment.get(key) if augment.get(key) is not None else preset_augment.get(key, default)
                       for key, default in AUGMENT_DEFAULTS.items()}
    build_augmentations(data["augment"])  # bad values fail here, before training
    if out["stage"]["needs_init"] and not out["init"]:
        raise DataError(f"stage {stage} starts from a checkpoint: give init=<joint run>/model_best.pth")
    return OmegaConf.create(out)


@dataclass(frozen=True)
class Schedule:
    """Optimisation settings of one run (already resolved)."""

    batch_size: int  # global batch
    lr: float
    max_epochs: int
    schedule_epochs: int
    weight_decay: float
    grad_clip: float  # 0: off
    warmup_fraction: float
    adam_eps: float = 1e-8
    no_decay: str = "ndim"  # nlq.engine.optim.NO_DECAY_RULES
    lr_decay: str = "linear"  # linear | step
    lr_drop_epochs: int = 0  # step decay: x0.1 every this many epochs (0: never)

    @classmethod
    def from_config(cls, cfg: Any) -> "Schedule":
        return cls(batch_size=int(cfg.batch_size), lr=float(cfg.lr), max_epochs=int(cfg.max_epochs),
                   schedule_epochs=int(cfg.schedule_epochs), weight_decay=float(cfg.weight_decay),
                   grad_clip=float(cfg.grad_clip or 0.0), warmup_fraction=float(cfg.warmup_fraction),
                   adam_eps=float(cfg.adam_eps), no_decay=str(cfg.no_decay), lr_decay=str(cfg.lr_decay),
                   lr_drop_epochs=int(cfg.lr_drop_epochs or 0))


# Data --------------------------------------------------------------------------------------
def data_config(data: Any, splits: Mapping[str, str] | None = None) -> dict:
    """The ``data`` node of a resolved training config as an nlq.data data config (absolute
    paths; ``splits`` maps split name -> annotation file, relative to annotations_dir)."""
    data = _container(data)
    features = {k: v for k, v in data["features"].items() if k != "by_model"}
    return resolve_data_config({
        "root": data["root"], "annotations_dir": data["annotations_dir"],
        "splits": dict(splits or {}), "train_splits": ["train"], "features": features,
        "max_len": data["max_len"], "naq_expansion": data["naq_expansion"],
        "naq_expansion_rule": data.get("naq_expansion_rule", "steps"),
        "naq_translate": data.get("naq_translate", True), "preparation": data.get("preparation", "exact"),
        "min_window_sec": data["min_window_sec"],
        **({"augment": data["augment"]} if data.get("augment") is not None else {})})


def build_features(resolved_data: Mapping) -> FeatureStore:
    return FeatureStore.from_config(resolved_data["features"], data_root=resolved_data["root"])


def load_queries(path: str | Path) -> tuple[NLQAnnotationFile, list[NLQQuery], int]:
    """(annotation file, its queries with text, number of language queries without text)."""
    if not Path(path).is_file():
        raise DataError(f"NLQ annotation file not found: {path}")
    annotations = load_nlq_annotations(path)
    queries = annotations.queries()
    return annotations, queries, annotations.num_language_queries() - len(queries)


def drop_missing_features(queries: list[NLQQuery], features: FeatureStore) -> tuple[list[NLQQuery], list[str]]:
    """Queries whose clip has a file in every feature set, and the clips that lack one."""
    present: dict[str, bool] = {}
    kept, missing = [], []
    for q in queries:
        uid = q.clip_uid if features.per == "clip" else q.video_uid
        if uid not in present:
            present[uid] = all(features.path(name, uid).is_file() for name in features.names)
            if not present[uid]:
                missing.append(q.clip_uid)
        if present[uid]:
            kept.append(q)
    return kept, missing


def ensure_naq_file(naq_file: str | Path, narrations: str | Path | None, annotations_dir: str | Path) -> dict | None:
    """Build the NLQ + NaQ training file when it does not exist (main process; the others
    wait). Returns the creation counts when it was built here, else None."""
    naq_file = Path(naq_file)
    stats = None
    if not naq_file.is_file() and narrations is None:
        raise DataError(f"NaQ training file not found: {naq_file} (and no narrations to build it from; "
                        "give naq_file=<NaQ's released file>)")
    if not naq_file.is_file() and distributed.is_main_process():
        log.info("%s not found: building it from %s and %s", naq_file, narrations, annotations_dir)
        result = make_naq(narrations, annotations_dir, naq_file)
        for line in result.lines():
            log.info("NaQ: %s", line)
        stats = result.as_dict()
    distributed.barrier()
    if not naq_file.is_file():
        raise DataError(f"NaQ training file not found after building it: {naq_file}")
    return stats


def naq_file_report(naq: NLQAnnotationFile, nlq_train: Path) -> dict:
    """Check a loaded NLQ + NaQ file against the NLQ train file (when present): a clip listed by
    both must have the same video times. Returns what was derived (NaQ's released layout) and
    the number of clips compared; logs both."""
    report: dict[str, Any] = {"derived": dict(naq.derived), "clips_checked_against_nlq_train": 0}
    if nlq_train.is_file() and nlq_train.resolve() != Path(naq.path).resolve():
        report["clips_checked_against_nlq_train"] = check_clip_times(naq, load_nlq_annotations(nlq_train))
        log.info("NaQ file %s: video times of %d clips agree with %s", naq.path,
                 report["clips_checked_against_nlq_train"], nlq_train)
    return report


def read_clip_list(path: str | Path) -> set[str]:
    """A JSON list of clip uids (NaQ's ``--zeroshot_subsample_clips`` / ``--scaling_subsample_clips`` files)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"clip list not found: {path}")
    clips = read_json(path)
    if not isinstance(clips, list) or not all(isinstance(c, str) for c in clips):
        raise DataError(f"{path}: a clip list must be a JSON list of clip_uid strings")
    return set(clips)


def subsample_by_clip_lists(queries: list[NLQQuery], nlq_clips: str | None,
                            naq_clips: str | None) -> tuple[list[NLQQuery], dict]:
    """NaQ's few-shot / scaling subsets: NLQ queries only of the clips in ``nlq_clips`` and
    NaQ queries only of the clips in ``naq_clips`` (each a clip-list file; None keeps all).
    Returns (kept queries, counts per list)."""
    lists = {kind: read_clip_list(path) for kind, path in (("nlq", nlq_clips), ("naq", naq_clips)) if path}
    if not lists:
        return queries, {}
    kept, counts = [], {kind: {"file": str(path), "clips": len(lists[kind]), "queries": 0, "kept": 0}
                        for kind, path in (("nlq", nlq_clips), ("naq", naq_clips)) if path}
    for q in queries:
        kind = "naq" if is_naq_query(q.query) else "nlq"
        if kind in lists:
            counts[kind]["queries"] += 1
            if q.clip_uid not in lists[kind]:
                continue
            counts[kind]["kept"] += 1
        kept.append(q)
    for kind, c in counts.items():
        log.info("%s queries of the clips in %s: %d of %d", kind.upper(), c["file"], c["kept"], c["queries"])
    return kept, counts


@dataclass
class TrainingData:
    """Datasets of a training run and what was counted while building them."""

    train: NLQDataset
    val: NLQDataset
    val_annotations: NLQAnnotationFile
    train_texts: list[str]  # training query texts (vocabulary of word-level encoders)
    report: dict = field(default_factory=dict)  # bad-input counts, also written to data_report.json


def build_training_data(cfg: Any) -> TrainingData:
    """Training and validation datasets of a resolved training config (stage picks the queries).

    Bad input is counted and the run continues: language queries without text, queries
    whose clip has no feature file (train only; in validation a missing file is an error
    naming the clip), zero-length windows, features shorter than the clip, narrations
    outside every clip (reported by the NaQ creation).
    """
    queries_kind = cfg.stage.queries
    report: dict[str, Any] = {"stage": cfg.stage.name, "queries": queries_kind}
    train_file = cfg.data.train_file  # relative to annotations_dir (an absolute path stays as is)
    if queries_kind != "nlq":
        naq_stats = ensure_naq_file(cfg.naq_file, cfg.narrations, Path(cfg.data.root) / cfg.data.annotations_dir)
        train_file = str(Path(cfg.naq_file).resolve())
        if naq_stats is not None:
            report["naq_creation"] = naq_stats
    resolved = data_config(cfg.data, {"train": train_file, "val": cfg.data.val_file})
    features = build_features(resolved)
    train_file = resolved["splits"]["train"]

    annotations, queries, textless = load_queries(train_file)
    if "naq" in annotations.meta and "counts" in annotations.meta["naq"]:
        report.setdefault("naq_creation", annotations.meta["naq"]["counts"])
    if queries_kind != "nlq":
        report["naq_file"] = naq_file_report(annotations, Path(resolved["annotations_dir"]) / cfg.data.train_file)
    if queries_kind == "naq":
        queries = [q for q in queries if is_naq_query(q.query)]
    queries, subsets = subsample_by_clip_lists(queries, cfg.data.get("nlq_clips"), cfg.data.get("naq_clips"))
    if subsets:
        report["clip_lists"] = subsets
    queries, missing = drop_missing_features(queries, features)
    report["train"] = {"file": str(train_file), "without_text": textless, "missing_feature_clips": len(missing),
                       "missing_feature_examples": missing[:5]}
    if missing:
        log.warning("train: %d clips have no feature file (their queries are skipped), e.g. %s",
                    len(missing), ", ".join(missing[:5]))
    if not queries:
        raise DataError(f"no training query left in {train_file} (stage {cfg.stage.name}: {queries_kind})")
    train = _dataset(queries, features, resolved, train=True, seed=int(cfg.seed), name="train")
    report["train"].update(train.stats)

    val_annotations, val_queries, val_textless = load_queries(resolved["splits"]["val"])
    val = _dataset(val_queries, features, resolved, train=False, seed=int(cfg.seed), name="val")
    report["val"] = {"file": resolved["splits"]["val"], "without_text": val_textless, **val.stats}
    for name, dataset in (("train", train), ("val", val)):
        if dataset.bad_feature_examples:
            report[name]["bad_feature_examples"] = dataset.bad_feature_examples
    if resolved["features"]["store"]:
        store_dir = resolved["features"]["store_dir"] or Path(cfg.output_dir) / "feature_store"
        for name, dataset in (("train", train), ("val", val)):
            if len(dataset):
                dataset.attach_store(open_or_build_store(features, dataset.clip_list(), dataset.store_pool_len(),
                                                         store_dir, name=name, pooling=dataset.preparation))
                report[name]["feature_store"] = str(dataset.store.folder)
    return TrainingData(train=train, val=val, val_annotations=val_annotations,
                        train_texts=[q.query for q in queries], report=report)


def _dataset(queries: list[NLQQuery], features: FeatureStore, resolved: Mapping, train: bool,
             seed: int | None, name: str) -> NLQDataset:
    return NLQDataset(queries, features, max_len=resolved["max_len"], train=train,
                      naq_expansion=resolved["naq_expansion"], seed=seed,
                      naq_expansion_rule=resolved["naq_expansion_rule"], naq_translate=resolved["naq_translate"],
                      preparation=resolved["preparation"],
                      min_window_sec=resolved["min_window_sec"], name=name,
                      augmentations=build_augmentations(resolved["augment"]) if train else None,
                      skip_bad_features=bool(resolved["features"]["skip_bad"]))


class ResumableDistributedSampler(EpochSampler):
    """:class:`EpochSampler` (``(index, epoch)`` pairs) whose epoch can start part-way:
    ``set_epoch(epoch, start=k)`` skips this rank's first ``k`` samples of that epoch (a run
    resumed mid-epoch after preemption)."""

    start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = max(int(start), 0)

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return max(self.num_samples - self.start, 0)


def build_train_loader(dataset: NLQDataset, tokenize, batch_size: int, num_workers: int, seed: int,
                       info: distributed.DistInfo) -> tuple[DataLoader, DistributedSampler]:
    """Shuffled training loader; ``batch_size`` is global (each of the ``world_size``
    processes loads its share). Call ``sampler.set_epoch(epoch)`` before every epoch.
    Workers persist across epochs (the sampler hands them the epoch with each index)."""
    per_rank = max(1, batch_size // info.world_size)
    if per_rank * info.world_size != batch_size:
        log.warning("global batch %d does not split over %d processes: %d per process, %d in all", batch_size,
                    info.world_size, per_rank, per_rank * info.world_size)
    sampler = ResumableDistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                          seed=seed, drop_last=False)
    loader = DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=num_workers,
                        collate_fn=NLQCollator(tokenize), pin_memory=info.device.type == "cuda",
                        drop_last=False, persistent_workers=num_workers > 0)
    return loader, sampler


# Model -------------------------------------------------------------------------------------
def build_nlq_model(model_cfg: Any, text_encoder_cfg: Any, video_dim: int,
                    train_texts: Iterable[str] | None = None, state_dict: Mapping | None = None) -> nn.Module:
    """Text encoder + NLQ model. With ``state_dict`` (a checkpoint's model weights) the
    word-level encoders take their vocabulary from it; the caller then loads the weights."""
    encoder = build_text_encoder(text_encoder_cfg, train_texts=train_texts, state_dict=state_dict)
    return build_model(model_cfg, encoder, video_dim=video_dim)


def load_init_weights(model: nn.Module, init: Mapping, path: str | Path, model_name: str) -> None:
    """Load an ``init`` checkpoint's weights into ``model``; a different model or shapes is a
    DataError naming the checkpoint."""
    saved_name = init.get("config", {}).get("model", {}).get("name")
    if saved_name is not None and saved_name != model_name:
        raise DataError(f"{path}: init checkpoint holds a {saved_name} model, this run trains {model_name}")
    try:
        model.load_state_dict(init["model"])
    except (RuntimeError, KeyError) as e:
        raise DataError(f"{path}: init checkpoint does not fit this model: {e}") from None


def checkpoint_model_state(path: str | Path) -> dict:
    """A checkpoint written by the trainer (weights + resolved config), loaded on CPU."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint file not found")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise DataError(f"{path}: not an NLQ checkpoint of tools/train_nlq.py (needs 'model' and 'config')")
    return state
