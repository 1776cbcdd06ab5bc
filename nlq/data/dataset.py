"""NLQ training / evaluation samples and their batching (docs/nlq.md#labels and docs/nlq.md#training-recipe).

:class:`NLQDataset` turns :class:`~nlq.data.annotations.NLQQuery` records into per-sample
dicts (pooled clip features, duration, labels); :class:`NLQCollator` pads them into the
batch every NLQ model consumes; :func:`build_datasets` is the one place translating the
``data`` config into datasets.
"""
from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, get_worker_info

from episodic.errors import DataError
from nlq.data.annotations import NLQKey, NLQQuery, load_nlq_annotations
from nlq.data.augment import AUGMENT_DEFAULTS, Augmentation, AugmentSample, apply_augmentations, build_augmentations
from nlq.data.features import POOLING, FeatureFileError, FeatureStore
from nlq.data.labels import (PREPARATIONS, highlight_labels, is_naq_query, released_duration, released_grid,
                             span_labels, steps_to_seconds)
from nlq.data.naq import EXPANSION_RULES, expand_span_steps, expand_window  # noqa: F401  (expand_window: re-export)
from nlq.data.pooled_store import PooledStore

log = logging.getLogger(__name__)

MIN_WINDOW_SEC = 1.0 / 30.0  # train/val queries with a window this short or shorter are dropped
SHORT_FEATURE_TOLERANCE = 2  # steps: features covering less than clip - this are "short"


class NLQDataset(Dataset):
    """One sample per language query.

    Args:
        queries: queries with text (``NLQAnnotationFile.queries()``), NLQ and NaQ mixed.
        features: where clip features come from.
        max_len: features longer than this are mean-pooled to it (VSLNet 128, ReLER 600).
        train: training mode: NaQ samples get a random window expansion at every draw.
        naq_expansion: max scale S of the NaQ expansion (2.5; 5.0 for NaQ++); None = off.
        naq_expansion_rule: "steps" (released: the label span's step indices, after pooling and
            augmentation, :func:`~nlq.data.naq.expand_span_steps`) or "seconds" (ours: the
            window in seconds before pooling, :func:`~nlq.data.naq.expand_window`).
        naq_translate: with rule "steps", also move the expanded span at random (the
            release's ``--nar_rand_window_translate``).
        preparation: "exact" (ours: annotated windows and clip durations as they are, every
            step pooled) or "released" (NaQ's: duration ``int(D * rate) / rate``, windows floored
            to the feature grid, the last step left out of the last pooled bin).
        seed: seed of the expansion RNG; None = derive it from torch's seed (set by the
            trainer, and per worker / epoch by the DataLoader).
        min_window_sec: queries with a known window of at most this length are dropped
            (train and val); None keeps them.
        short_feature_tolerance: features covering fewer than clip duration minus this many
            steps are "short": the sample's duration becomes the covered seconds.
        augmentations: applied in order to training samples with a GT window, after the NaQ
            expansion and before pooling (:mod:`nlq.data.augment`; ReLER); None = off.
            Video splicing draws its donor among the dataset's other clips.
        skip_bad_features: a clip whose feature file is missing or of the wrong shape
            (:meth:`FeatureStore.check_clip`) has its queries skipped and counted
            (``stats["bad_feature_clips"]``, names in ``bad_feature_examples``, every skipped
            query's key -> the error in ``bad_feature_keys``) instead of raising a
            :class:`~nlq.data.features.FeatureFileError` naming the clip and file.
        store: where samples read their features from once it is set
            (:meth:`attach_store`; a :class:`~nlq.data.pooled_store.PooledStore` of this
            dataset's clips); None: from ``features`` directly.

    A sample is a dict: ``key`` (NLQKey), ``query`` (str, as in the file), ``video`` [N, D]
    (N = min(T, max_len)), ``feature_dims`` (D of each feature set), ``duration`` (s),
    ``window`` ((start, end) s, after NaQ expansion and augmentation; None without GT), ``start_label``,
    ``end_label`` (int; None without GT), ``highlight_label`` [N] (None without GT), ``is_naq``.
    """

    def __init__(self, queries: list[NLQQuery], features: FeatureStore, max_len: int, train: bool,
                 naq_expansion: float | None = 2.5, seed: int | None = None,
                 min_window_sec: float | None = MIN_WINDOW_SEC,
                 short_feature_tolerance: int = SHORT_FEATURE_TOLERANCE, name: str = "",
                 augmentations: list[Augmentation] | None = None, naq_expansion_rule: str = "steps",
                 naq_translate: bool = True, preparation: str = "exact",
                 skip_bad_features: bool = False):
        if naq_expansion_rule not in EXPANSION_RULES:
            raise ValueError(f"naq_expansion_rule must be one of {EXPANSION_RULES} (got {naq_expansion_rule!r})")
        if preparation not in PREPARATIONS:
            raise ValueError(f"preparation must be one of {PREPARATIONS} (got {preparation!r})")
        self.naq_expansion_rule = naq_expansion_rule
        self.naq_translate = bool(naq_translate)
        self.preparation = preparation
        self.pool = POOLING[preparation]
        self.features = features
        self.max_len = int(max_len)
        self.train = bool(train)
        self.naq_expansion = naq_expansion if naq_expansion and naq_expansion > 1.0 else None
        self.seed = seed
        self.base_seed = seed
        self.short_feature_tolerance = short_feature_tolerance
        self.name = name
        self.augmentations = list(augmentations) if augmentations else None
        self.store: PooledStore | None = None
        self.stats = {"queries": len(queries), "dropped_short_window": 0, "short_features": 0,
                      "window_outside_features": 0, "naq": 0, "kept": 0, "bad_feature_clips": 0,
                      "bad_feature_queries": 0}
        self.bad_feature_examples: list[str] = []
        self.bad_feature_keys: dict[NLQKey, str] = {}
        errors: dict[tuple, str] = {}  # clip args -> the error of its feature files
        self.queries: list[NLQQuery] = []
        checked: dict[tuple, int | None] = {}  # clip args -> steps (None: bad files, skipped)
        for q in queries:
            if q.window is not None and min_window_sec is not None and q.window[1] - q.window[0] <= min_window_sec:
                self.stats["dropped_short_window"] += 1
                continue
            clip = self._clip_args(q)
            if clip not in checked:
                try:
                    checked[clip] = self.features.check_clip(*clip)
                except FeatureFileError as e:
                    if not skip_bad_features:
                        raise
                    checked[clip], errors[clip] = None, str(e)
                    self.stats["bad_feature_clips"] += 1
                    if len(self.bad_feature_examples) < 5:
                        self.bad_feature_examples.append(str(e))
                    log.warning("%s: skipping the queries of clip %s: %s", name or "NLQDataset", q.clip_uid, e)
            if checked[clip] is None:
                self.stats["bad_feature_queries"] += 1
                self.bad_feature_keys[q.key] = errors[clip]
                continue
            duration, short = self._duration(checked[clip], q)
            self.stats["short_features"] += short
            if q.window is not None and min(q.window[1], duration) - q.window[0] <= 0:
                self.stats["window_outside_features"] += 1
                if self.train:  # no usable target; kept in evaluation (scored on the file)
                    continue
            self.stats["naq"] += is_naq_query(q.query)
            self.queries.append(q)
        self.stats["kept"] = len(self.queries)
        # distinct clips (clip args), the donors of video splicing
        self._clips = list(dict.fromkeys(self._clip_args(q) for q in self.queries))
        self._clip_index = {clip: i for i, clip in enumerate(self._clips)}
        self._rng: np.random.Generator | None = None
        self._rng_token: Any = object()
        log.info("%s", self.summary())

    def summary(self) -> str:
        s = self.stats
        outside = "dropped" if self.train else "kept"
        return (f"NLQDataset {self.name or ''}: {s['kept']} of {s['queries']} queries ({s['naq']} NaQ); "
                f"dropped {s['dropped_short_window']} with a window <= min_window_sec; "
                f"{s['window_outside_features']} with the window outside the features ({outside}); "
                f"{s['short_features']} with features shorter than the clip; "
                f"{s['bad_feature_queries']} skipped in {s['bad_feature_clips']} clips with bad feature files"
                + (f"; augmentations {self.augmentations}" if self.train and self.augmentations else ""))

    def __len__(self) -> int:
        return len(self.queries)

    def set_epoch(self, seed: int, epoch: int) -> None:
        """Draw NaQ window expansions from a stream of (seed, epoch), so a resumed run
        repeats an uninterrupted one (DataLoader workers derive their own from it)."""
        self.seed = seed * 100_003 + epoch
        self._rng = None  # recreated from ``seed`` at the next draw

    def clip_list(self) -> list[tuple[str, str, float, float]]:
        """Distinct clips of the dataset: ``(clip_uid, video_uid, video_start_sec, video_end_sec)``."""
        return list(self._clips)

    def store_pool_len(self) -> int | None:
        """Steps a store for this dataset keeps per clip: ``max_len`` (already pooled), or
        None (every step) when training augmentations need the unpooled features."""
        return None if self.train and self.augmentations else self.max_len

    def attach_store(self, store: PooledStore) -> None:
        """Read features from ``store`` (built for :meth:`clip_list` and :meth:`store_pool_len`)."""
        if store.pool_len != self.store_pool_len():
            raise ValueError(f"store pooled to {store.pool_len} steps, dataset needs {self.store_pool_len()}")
        if store.pooling != self.preparation:
            raise ValueError(f"store pooled with the {store.pooling!r} rule, dataset needs {self.preparation!r}")
        missing = [c for c in self._clips if c not in store]
        if missing:
            raise ValueError(f"store {store.folder} lacks {len(missing)} clips of this dataset, e.g. {missing[0][0]}")
        self.store = store

    # Helpers -------------------------------------------------------------------------------
    def _clip_args(self, q: NLQQuery) -> tuple[str, str, float, float]:
        """The clip's own video bounds (``video_end_sec`` from the file, not start + duration)."""
        return (q.clip_uid, q.video_uid, *q.video_bounds)

    def _clip_features(self, clip: tuple) -> tuple[torch.Tensor, int]:
        """(features [L, D], steps before pooling): L = steps, or at most ``max_len`` from a pooled store."""
        if self.store is not None:
            return self.store.get(clip)
        feat = self.features.clip_features(*clip)
        return feat, feat.shape[0]

    def _duration(self, num_steps: int, q: NLQQuery) -> tuple[float, bool]:
        """(seconds the sample spans, whether the features are short of the clip).

        Preparation "released": ``int(D * rate) / rate`` whatever the features cover."""
        if num_steps <= 0:
            raise DataError(f"features of clip {q.clip_uid} have no step (feature root {self.features.root})")
        covered = num_steps / self.features.rate
        if self.preparation == "released":
            return released_duration(q.clip_duration, self.features.rate), False
        if covered < q.clip_duration - self.short_feature_tolerance / self.features.rate:
            return covered, True
        return q.clip_duration, False

    def _sample_generator(self, index: int, epoch: int) -> np.random.Generator:
        """RNG of one (epoch, sample) draw (:class:`EpochSampler`): the same in any worker,
        so persistent workers and resumed runs draw what an uninterrupted run draws."""
        base = self.base_seed if self.base_seed is not None else torch.initial_seed()
        return np.random.default_rng([base, epoch, index])

    def _generator(self) -> np.random.Generator:
        """Per-process RNG: reseeded in each DataLoader worker and each epoch (``info.seed``)."""
        info = get_worker_info()
        token = None if info is None else info.seed
        if self._rng is None or token != self._rng_token:
            base = self.seed if self.seed is not None else torch.initial_seed()
            self._rng = np.random.default_rng([base] if token is None else [base, token])
            self._rng_token = token
        return self._rng

    def _donor_sampler(self, q: NLQQuery) -> Callable[[np.random.Generator], torch.Tensor | None]:
        """rng -> features [T', D] of a uniformly drawn clip other than ``q``'s (None: no other clip)."""
        own = self._clip_index[self._clip_args(q)]

        def draw(rng: np.random.Generator) -> torch.Tensor | None:
            if len(self._clips) < 2:
                return None
            other = int(rng.integers(len(self._clips) - 1))
            return self._clip_features(self._clips[other + (other >= own)])[0]

        return draw

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        """``index``, or ``(index, epoch)`` from :class:`EpochSampler` (random draws seeded
        by seed, epoch and index instead of the worker's stream)."""
        rng = None
        if isinstance(index, tuple):
            index, epoch = index
            rng = self._sample_generator(index, epoch)
        q = self.queries[index]
        feat, raw_steps = self._clip_features(self._clip_args(q))  # [T, D] (or already pooled)
        duration, _ = self._duration(raw_steps, q)
        naq = is_naq_query(q.query)
        window = None
        expand = self.train and naq and self.naq_expansion is not None
        if q.window is not None:
            if self.preparation == "released":
                window = released_grid(q.window, duration, self.features.rate)
            else:
                start = min(max(q.window[0], 0.0), duration)
                window = (start, min(max(q.window[1], start), duration))
            if expand and self.naq_expansion_rule == "seconds":
                window = expand_window(window, duration, self.naq_expansion, rng or self._generator())
            if self.train and self.augmentations:
                augmented = apply_augmentations(self.augmentations, AugmentSample(feat, window, duration),
                                                rng or self._generator(), self._donor_sampler(q))
                feat, window, duration = augmented.features, augmented.window, augmented.duration
        video = self.pool(feat, self.max_len)  # [N, D]
        num_steps = video.shape[0]
        sample = {"key": q.key, "query": q.query, "video": video, "feature_dims": tuple(self.features.dims),
                  "duration": duration, "window": None, "start_label": None, "end_label": None,
                  "highlight_label": None, "is_naq": naq}
        if window is not None:
            s_idx, e_idx = span_labels(window, duration, num_steps)
            if expand and self.naq_expansion_rule == "steps":
                s_idx, e_idx = expand_span_steps(s_idx, e_idx, num_steps, self.naq_expansion, self.naq_translate,
                                                 rng or self._generator())
                window = steps_to_seconds(s_idx, e_idx, duration, num_steps)
            sample.update(window=window, start_label=s_idx, end_label=e_idx,
                          highlight_label=torch.from_numpy(highlight_labels(s_idx, e_idx, num_steps)))
        return sample


class EpochSampler(DistributedSampler):
    """:class:`~torch.utils.data.DistributedSampler` yielding ``(index, epoch)``: the
    dataset seeds each sample's random draws from them, so they do not depend on which
    (persistent) worker loads it. Call ``set_epoch(epoch)`` before every epoch."""

    def __iter__(self):
        epoch = self.epoch
        return ((index, epoch) for index in super().__iter__())


class NLQCollator:
    """Pads samples into a batch.

    Args:
        tokenize: list of query strings -> dict of text tensors (the text encoder's; it
            owns sentence normalisation, see :func:`nlq.data.labels.normalize_query`).

    Batch: ``video`` [B, T, Dv] (zero padded), ``video_mask`` [B, T] bool, ``feature_dims``
    list[int], ``text`` (tokenize's dict), ``duration`` [B], and, when every sample has a
    GT window, ``start_label`` [B] long, ``end_label`` [B] long, ``highlight_label`` [B, T]
    float, ``gt_window`` [B, 2] float; ``keys`` list[NLQKey].
    """

    def __init__(self, tokenize: Callable[[list[str]], dict]):
        self.tokenize = tokenize

    def __call__(self, samples: list[dict]) -> dict:
        if not samples:
            raise ValueError("NLQCollator: empty batch")
        dims = samples[0]["feature_dims"]
        if any(s["feature_dims"] != dims for s in samples):
            raise ValueError("NLQCollator: samples with different feature_dims in one batch")
        lengths = [s["video"].shape[0] for s in samples]
        size, max_steps = len(samples), max(lengths)
        video = torch.zeros(size, max_steps, samples[0]["video"].shape[1], dtype=torch.float32)
        mask = torch.zeros(size, max_steps, dtype=torch.bool)
        for b, s in enumerate(samples):
            video[b, :lengths[b]] = s["video"]
            mask[b, :lengths[b]] = True
        batch = {"video": video, "video_mask": mask, "feature_dims": list(dims),
                 "text": self.tokenize([s["query"] for s in samples]),
                 "duration": torch.tensor([s["duration"] for s in samples], dtype=torch.float32)}
        labelled = [s["window"] is not None for s in samples]
        if all(labelled):
            highlight = torch.zeros(size, max_steps, dtype=torch.float32)
            for b, s in enumerate(samples):
                highlight[b, :lengths[b]] = s["highlight_label"]
            batch.update(
                start_label=torch.tensor([s["start_label"] for s in samples], dtype=torch.long),
                end_label=torch.tensor([s["end_label"] for s in samples], dtype=torch.long),
                highlight_label=highlight,
                gt_window=torch.tensor([s["window"] for s in samples], dtype=torch.float32))
        elif any(labelled):
            raise ValueError("NLQCollator: a batch mixes samples with and without GT windows")
        batch["keys"] = [NLQKey(*s["key"]) for s in samples]
        return batch


# Config -> datasets ------------------------------------------------------------------------
DATA_DEFAULTS: dict = {
    "root": "data/synthetic",            # data set root (ROOT/v2/annotations, ROOT/v2/nlq_features)
    "annotations_dir": "v2/annotations",  # annotation folder, relative to root unless absolute
    "splits": {                          # split name -> annotation file in annotations_dir
        "train": "nlq_train.json",       # (nlq_naq_train.json: NLQ + NaQ from tools/make_naq.py)
        "val": "nlq_val.json",
    },
    "train_splits": ["train"],           # splits built with train=True (NaQ expansion, drops)
    "features": {
        "root": "v2/nlq_features",       # folder of feature sets, relative to root unless absolute
        "names": ["synthetic"],          # sets concatenated along D (ReLER: [main, clip]);
                                         # synthetic: synthetic (+ synthetic_clip); Ego4D: e.g. slowfast
        "per": "clip",                   # files per "clip" (clip_uid.pt) or per "video"
        "rate": None,                    # features per second of every set (None: per set, see rates)
        "rates": {},                     # set name -> features per second (absent: known sets' rates)
        "cache_size": 4,                 # whole files kept in memory per process (None: all)
        "length_tolerance": 1,           # steps a file may differ from duration x rate
        "skip_bad": False,               # skip (and count) clips with missing / wrongly shaped files
        "store": True,                   # training: features pooled once into a store on disk
        "store_dir": None,               # its folder (None: OUTPUT/feature_store; share it between runs)
    },
    "max_len": 128,                      # pool longer features to this (VSLNet 128, ReLER 600)
    "naq_expansion": 2.5,                # NaQ window expansion scale S (5.0 NaQ++; null: off)
    "naq_expansion_rule": "steps",       # steps: released (label step indices) | seconds: ours
    "naq_translate": True,               # steps rule: random translation inside the expanded span
    "preparation": "exact",              # exact: ours | released: NaQ's grid, duration and pooling
    "min_window_sec": MIN_WINDOW_SEC,    # drop train/val queries with windows this short
    "seed": None,                        # NaQ expansion / augmentation seed (null: from torch's seed)
    "augment": dict(AUGMENT_DEFAULTS),   # ReLER training augmentations (nlq.data.augment), off by default
}


def _merge(defaults: Mapping, overrides: Mapping, where: str) -> dict:
    out = copy.deepcopy(dict(defaults))
    for key, value in overrides.items():
        if key not in defaults:
            raise KeyError(f"unknown config key '{where}{key}' (known: {', '.join(defaults)})")
        if isinstance(defaults[key], Mapping) and isinstance(value, Mapping) and key not in ("splits", "rates"):
            out[key] = _merge(defaults[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def resolve_data_config(cfg: Mapping | None) -> dict:
    """The ``data`` config with defaults filled in and paths made absolute (unknown keys are errors)."""
    if cfg is not None and not isinstance(cfg, Mapping):  # an OmegaConf DictConfig
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(cfg, resolve=True)
    out = _merge(DATA_DEFAULTS, dict(cfg or {}), "data.")
    root = Path(out["root"]).absolute()  # absolute, so resolving twice never prefixes the root twice
    out["root"] = str(root)
    out["annotations_dir"] = str(root / out["annotations_dir"])
    out["features"]["root"] = str(root / out["features"]["root"])
    out["splits"] = {k: str(Path(out["annotations_dir"]) / v) for k, v in dict(out["splits"]).items()}
    return out


def build_datasets(cfg: Mapping | None, splits: list[str] | None = None,
                   max_len: int | None = None) -> dict[str, NLQDataset]:
    """Datasets of the requested splits (default: all in ``cfg.splits``) from the ``data``
    config; ``max_len`` overrides ``cfg.max_len`` (the model's limit)."""
    resolved = resolve_data_config(cfg)
    features = FeatureStore.from_config(resolved["features"], data_root=resolved["root"])
    names = list(resolved["splits"]) if splits is None else list(splits)
    out = {}
    for split in names:
        if split not in resolved["splits"]:
            raise KeyError(f"split '{split}' is not in data.splits ({', '.join(resolved['splits'])})")
        path = resolved["splits"][split]
        if not os.path.isfile(path):
            raise DataError(f"annotation file of split '{split}' not found: {path}")
        out[split] = NLQDataset(load_nlq_annotations(path).queries(), features,
                                max_len=max_len or resolved["max_len"],
                                train=split in resolved["train_splits"],
                                naq_expansion=resolved["naq_expansion"], seed=resolved["seed"],
                                naq_expansion_rule=resolved["naq_expansion_rule"],
                                naq_translate=resolved["naq_translate"], preparation=resolved["preparation"],
                                min_window_sec=resolved["min_window_sec"], name=split,
                                augmentations=(build_augmentations(resolved["augment"])
                                               if split in resolved["train_splits"] else None),
                                skip_bad_features=bool(resolved["features"]["skip_bad"]))
    return out
