"""Pre-extracted NLQ video features (docs/nlq.md#features, docs/data.md#features).

Layout of one feature set ``name`` under ``root`` (as the ``ego4d`` CLI and NaQ's feature
downloader lay them out)::

    <root>/<name>/<uid>.pt              # float tensor [T, D]
    <root>/<name>/feature_shapes.json   # {uid: T}, optional (cross-checked, never trusted)

``uid`` is a clip_uid (``per="clip"``: NaQ's per-clip files) or a video_uid
(``per="video"``: the ``ego4d`` CLI's per-video files; a clip is then the slice
``feat[int(s * rate) : int(e * rate) + 1]`` of its canonical video, ``s, e`` the clip's own
``video_start_sec`` / ``video_end_sec``).

Each set has its own rate (features per second): ``rates[name]``, else ``rate`` for every
set, else :data:`KNOWN_RATES` by name; an unknown one is an error. Several sets (e.g.
SlowFast + CLIP for ReLER) are concatenated along D on the time grid of the first set: step
``j`` of another set is the one covering the centre ``(j + 0.5) / rate_0`` seconds of step
``j`` (nearest in time; never cropped to the shortest).

Every file's real shape is checked (read without loading the data, from the file's
memory map): its width against the set's, its length against the clip's duration times the
rate (per clip: ``|T - int(d * rate)| <= tolerance``; per video: the slice may end at most
``tolerance`` steps short of ``int(e * rate)``). A mismatch is a :class:`FeatureFileError`
naming the clip and the file.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

import torch

from episodic.errors import DataError
from episodic.io import read_json

log = logging.getLogger(__name__)

FEATURES_PER_SECOND = 1.875  # SlowFast: 32-frame windows, stride 16 at 30 fps
# Rates of the released feature sets by name (a set named e.g. "slowfast8x8_r101_k400" takes
# the entry its name starts with). NaQ's preparation uses 1.875 features/s for every set it
# releases (SlowFast 2304-d, EgoVLP 256-d, InternVideo 2304-d, CLIP 512-d); Omnivore (ego4d CLI,
# 1536-d) has the same 16-frame stride.
KNOWN_RATES: dict[str, float] = {"slowfast": 1.875, "egovlp": 1.875, "internvideo": 1.875, "clip": 1.875,
                                 "omnivore": 1.875, "synthetic": 1.875, "synthetic_clip": 1.875}
LENGTH_TOLERANCE = 1  # steps a file may differ from the clip's duration x rate


class FeatureFileError(DataError):
    """A feature file that is missing, unreadable or of the wrong shape for a clip."""


def pool_to_max_len(feat: torch.Tensor, max_len: int) -> torch.Tensor:
    """Mean-pool ``feat [T, D]`` to ``[min(T, max_len), D]`` (VSLNet, docs/nlq.md#features).

    When ``T > max_len``, bin ``i`` averages steps ``[edges[i], edges[i+1])`` with
    ``edges = round(arange(max_len + 1) / max_len * T)``; otherwise ``feat`` is returned.
    """
    if feat.ndim != 2:
        raise ValueError(f"pool_to_max_len expects [T, D], got shape {tuple(feat.shape)}")
    num_steps = feat.shape[0]
    if max_len <= 0:
        raise ValueError(f"max_len must be > 0 (got {max_len})")
    if num_steps <= max_len:
        return feat
    edges = torch.round(torch.arange(max_len + 1, dtype=torch.float64) / max_len * num_steps).long()
    counts = edges[1:] - edges[:-1]  # [max_len], all >= 1 since T / max_len > 1
    bin_of_step = torch.repeat_interleave(torch.arange(max_len), counts)  # [T]
    sums = torch.zeros(max_len, feat.shape[1], dtype=torch.float64)
    sums.index_add_(0, bin_of_step, feat.to(torch.float64))
    return (sums / counts[:, None]).to(feat.dtype)


def pool_to_max_len_released(feat: torch.Tensor, max_len: int) -> torch.Tensor:
    """NaQ / VSLNet's released pooling of ``feat [T, D]`` to ``[min(T, max_len), D]``.

    Edges ``round(arange(max_len + 1) / max_len * T)`` with every edge above ``T - 1`` set to
    ``T - 1``, so the last step is left out of the last bin; bin ``i`` averages steps
    ``[edges[i], edges[i+1])``, and an empty bin takes step ``edges[i]`` alone. Otherwise as
    :func:`pool_to_max_len` (``feat`` itself when ``T <= max_len``).
    """
    if feat.ndim != 2:
        raise ValueError(f"pool_to_max_len_released expects [T, D], got shape {tuple(feat.shape)}")
    if max_len <= 0:
        raise ValueError(f"max_len must be > 0 (got {max_len})")
    num_steps = feat.shape[0]
    if num_steps <= max_len:
        return feat
    edges = torch.round(torch.arange(max_len + 1, dtype=torch.float64) / max_len * num_steps).long()
    edges = edges.clamp(max=num_steps - 1)
    counts = edges[1:] - edges[:-1]  # [max_len], >= 0
    cumulative = torch.cat([feat.new_zeros(1, feat.shape[1], dtype=torch.float64),
                            feat.to(torch.float64).cumsum(0)])  # [T + 1, D]
    sums = cumulative[edges[1:]] - cumulative[edges[:-1]]
    means = sums / counts.clamp(min=1)[:, None]
    pooled = torch.where((counts > 0)[:, None], means, feat[edges[:-1]].to(torch.float64))
    return pooled.to(feat.dtype)


POOLING = {"exact": pool_to_max_len, "released": pool_to_max_len_released}  # data.preparation -> pooling


def video_slice(start_sec: float, end_sec: float, rate: float = FEATURES_PER_SECOND) -> slice:
    """Steps of a per-video feature tensor covering ``[start_sec, end_sec]`` of the video."""
    return slice(max(0, int(start_sec * rate)), max(0, int(end_sec * rate)) + 1)


def rate_of(name: str, rates: Mapping[str, float] | None = None, rate: float | None = None) -> float:
    """Features per second of set ``name``: ``rates[name]``, else ``rate``, else
    :data:`KNOWN_RATES` (exact name, then the longest known prefix); else a DataError."""
    if rates and rates.get(name) is not None:
        value = float(rates[name])
    elif rate is not None:
        value = float(rate)
    else:
        known = KNOWN_RATES.get(name.lower())
        if known is None:
            prefixes = sorted((k for k in KNOWN_RATES if name.lower().startswith(k)), key=len, reverse=True)
            known = KNOWN_RATES[prefixes[0]] if prefixes else None
        if known is None:
            raise DataError(f"feature set '{name}': unknown rate (features per second); give it with "
                            f"+data.features.rates.{name}=<rate> (known sets: {', '.join(sorted(KNOWN_RATES))})")
        value = known
    if not value > 0:
        raise DataError(f"feature set '{name}': rate must be > 0 (got {value})")
    return value


def align_to_grid(parts: list[torch.Tensor], rates: list[float]) -> torch.Tensor:
    """Concatenate ``parts`` ([T_i, D_i]) along D on the time grid of ``parts[0]``:
    ``[T_0, sum D_i]``, step ``j`` of set ``i`` = ``min(T_i - 1, floor((j + 0.5) * r_i / r_0))``."""
    if len(parts) == 1:
        return parts[0]
    steps = parts[0].shape[0]
    centre = (torch.arange(steps, dtype=torch.float64) + 0.5) / rates[0]  # [T_0] seconds
    out = [parts[0]]
    for part, rate in zip(parts[1:], rates[1:]):
        if part.shape[0] == steps and rate == rates[0]:
            out.append(part)
            continue
        index = torch.clamp(torch.floor(centre * rate).long(), 0, part.shape[0] - 1)
        out.append(part[index])
    return torch.cat(out, dim=1)


class FeatureStore:
    """Loads one or several feature sets and returns per-clip ``[T, sum(D)]``.

    Args:
        root: folder holding one sub-folder per feature set.
        names: feature-set names (sub-folders), concatenated along D in this order; the
            first one gives the time grid.
        per: "clip" (files named by clip_uid) or "video" (files named by video_uid).
        rate: features per second of every set (None: by set, see ``rates``).
        rates: features per second per set name (None entries / absent names: ``rate``,
            else :data:`KNOWN_RATES`).
        cache_size: whole files kept in memory per process (LRU); None = unlimited, 0 = none.
        length_tolerance: steps a file's length may differ from duration x rate.
    """

    def __init__(self, root: str | os.PathLike, names: list[str] | tuple[str, ...], per: str = "clip",
                 rate: float | None = None, cache_size: int | None = 4, rates: Mapping[str, float] | None = None,
                 length_tolerance: int = LENGTH_TOLERANCE):
        if per not in ("clip", "video"):
            raise ValueError(f"per must be 'clip' or 'video' (got {per!r})")
        if isinstance(names, str) or not names:
            raise ValueError(f"names must be a non-empty list of feature-set names (got {names!r})")
        self.root = Path(root)
        self.names = list(names)
        self.per = per
        self.rates = [rate_of(name, rates, rate) for name in self.names]
        self.cache_size = cache_size
        self.length_tolerance = int(length_tolerance)
        self._cache: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._shapes: dict[str, dict[str, int]] = {}
        self._file_shapes: dict[tuple[str, str], tuple[int, int]] = {}
        self._dims: list[int] | None = None
        self._shape_file_disagreements = 0

    @property
    def rate(self) -> float:
        """Features per second of the grid (the first set's)."""
        return self.rates[0]

    def path(self, name: str, uid: str) -> Path:
        return self.root / name / f"{uid}.pt"

    def _what(self, uid: str, clip_uid: str | None) -> str:
        return f"clip {clip_uid}" if clip_uid is not None else f"{self.per} {uid}"

    # File access -------------------------------------------------------------------------
    def shapes(self, name: str) -> dict[str, int]:
        """``feature_shapes.json`` of one set (uid -> T); empty when the file is absent."""
        if name not in self._shapes:
            path = self.root / name / "feature_shapes.json"
            shapes = read_json(path) if path.is_file() else {}
            if not isinstance(shapes, dict):
                raise DataError(f"{path}: expected an object mapping uid -> number of steps")
            self._shapes[name] = {str(k): int(v[0] if isinstance(v, (list, tuple)) else v)
                                  for k, v in shapes.items()}
        return self._shapes[name]

    def _read(self, name: str, uid: str, clip_uid: str | None, mmap: bool) -> torch.Tensor:
        path = self.path(name, uid)
        what = self._what(uid, clip_uid)
        if not path.is_file():
            raise FeatureFileError(f"features '{name}' for {what}: file not found: {path}")
        try:
            try:
                feat = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError:
                if not mmap:
                    raise
                feat = torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) file
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
            raise FeatureFileError(f"features '{name}' for {what}: cannot read {path}: {e}") from None
        if not isinstance(feat, torch.Tensor) or feat.ndim != 2 or not feat.is_floating_point():
            desc = tuple(feat.shape) if isinstance(feat, torch.Tensor) else type(feat).__name__
            raise FeatureFileError(f"features '{name}' for {what}: {path} must hold a float tensor [T, D] "
                                   f"(got {desc})")
        return feat

    def file_shape(self, name: str, uid: str, clip_uid: str | None = None) -> tuple[int, int]:
        """Real ``(T, D)`` of ``<root>/<name>/<uid>.pt``, read from the file's memory map
        (no data loaded), cached; a ``feature_shapes.json`` entry that disagrees is logged."""
        key = (name, uid)
        if key not in self._file_shapes:
            shape = tuple(self._read(name, uid, clip_uid, mmap=True).shape)
            self._file_shapes[key] = shape
            listed = self.shapes(name).get(uid)
            if listed is not None and listed != shape[0]:
                self._shape_file_disagreements += 1
                log.warning("features '%s': feature_shapes.json says %d steps for %s, but %s has %d "
                            "(the file's shape is used)", name, listed, uid, self.path(name, uid), shape[0])
        return self._file_shapes[key]

    def load(self, name: str, uid: str, clip_uid: str | None = None) -> torch.Tensor:
        """The whole tensor ``[T, D]`` (float32) of ``<root>/<name>/<uid>.pt`` (LRU-cached)."""
        key = (name, uid)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        feat = self._read(name, uid, clip_uid, mmap=False).float()
        self._file_shapes.setdefault(key, tuple(feat.shape))
        if self.cache_size != 0:
            self._cache[key] = feat
            if self.cache_size is not None and len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return feat

    # Checks ------------------------------------------------------------------------------
    def check_clip(self, clip_uid: str, video_uid: str | None = None, video_start_sec: float | None = None,
                   video_end_sec: float | None = None) -> int:
        """Check every set's file of one clip (exists, width, length against the clip's
        duration x rate) without loading the data; returns the clip's length T on the grid.
        Raises :class:`FeatureFileError` naming the clip and the file."""
        dims = self.dims
        lengths = []
        for name, rate, dim in zip(self.names, self.rates, dims):
            uid = self._uid(clip_uid, video_uid, video_start_sec, video_end_sec)
            steps, width = self.file_shape(name, uid, clip_uid)
            path = self.path(name, uid)
            if width != dim:
                raise FeatureFileError(f"features '{name}' for clip {clip_uid}: {path} has width {width}, but "
                                       f"set '{name}' has width {dim} (its other files)")
            tol = self.length_tolerance
            if self.per == "video":
                piece = video_slice(video_start_sec, video_end_sec, rate)
                have = max(0, min(steps, piece.stop) - piece.start)
                want = piece.stop - 1 - piece.start  # int(e * rate) - int(s * rate)
                if have < want - tol or have == 0:
                    raise FeatureFileError(
                        f"features '{name}' for clip {clip_uid}: {path} has {steps} steps, the clip's slice "
                        f"[{video_start_sec:g}, {video_end_sec:g}] s needs steps {piece.start}..{piece.stop - 1} "
                        f"at {rate:g}/s (the file is {want - have} steps short)")
            else:
                have = steps
                if video_start_sec is not None and video_end_sec is not None:
                    duration = video_end_sec - video_start_sec
                    want = int(duration * rate)
                    if abs(have - want) > tol:
                        raise FeatureFileError(
                            f"features '{name}' for clip {clip_uid}: {path} has {steps} steps, but the clip lasts "
                            f"{duration:g} s = {want} steps at {rate:g}/s (more than {tol} step(s) apart; "
                            "wrong file, or wrong rate for this set?)")
            lengths.append(have)
        return lengths[0]

    # Per-clip access ---------------------------------------------------------------------
    def _uid(self, clip_uid: str, video_uid: str | None, start: float | None, end: float | None) -> str:
        if self.per == "clip":
            return clip_uid
        if video_uid is None or start is None or end is None:
            raise ValueError(f"clip {clip_uid}: per-video features need video_uid and the clip's "
                             "video_start_sec / video_end_sec")
        return video_uid

    def clip_features(self, clip_uid: str, video_uid: str | None = None,
                      video_start_sec: float | None = None, video_end_sec: float | None = None
                      ) -> torch.Tensor:
        """Features of one clip, ``[T, sum(dims)]`` on the first set's time grid.

        ``video_uid`` and the clip's bounds in video seconds are needed when ``per="video"``.
        """
        parts = [self._one_set(name, rate, clip_uid, video_uid, video_start_sec, video_end_sec)
                 for name, rate in zip(self.names, self.rates)]
        return align_to_grid(parts, self.rates)

    def _one_set(self, name: str, rate: float, clip_uid: str, video_uid: str | None,
                 start: float | None, end: float | None) -> torch.Tensor:
        uid = self._uid(clip_uid, video_uid, start, end)
        if self.per == "clip":
            return self.load(name, uid, clip_uid=clip_uid)
        feat = self.load(name, uid, clip_uid=clip_uid)[video_slice(start, end, rate)]
        if feat.shape[0] == 0:
            raise FeatureFileError(f"features '{name}' for clip {clip_uid}: {self.path(name, uid)} "
                                   f"has no step in [{start:g}, {end:g}] s of video {video_uid}")
        return feat

    def num_steps(self, clip_uid: str, video_uid: str | None = None,
                  video_start_sec: float | None = None, video_end_sec: float | None = None) -> int:
        """Length T of :meth:`clip_features` (the first set's), from the file's shape (no data loaded)."""
        uid = self._uid(clip_uid, video_uid, video_start_sec, video_end_sec)
        total = self.file_shape(self.names[0], uid, clip_uid)[0]
        if self.per == "video":
            piece = video_slice(video_start_sec, video_end_sec, self.rates[0])
            total = max(0, min(total, piece.stop) - piece.start)
        return total

    def covered_seconds(self, num_steps: int) -> float:
        return num_steps / self.rate

    @property
    def dims(self) -> list[int]:
        """Feature size D of each set, in ``names`` order (one file's shape per set, read once)."""
        if self._dims is None:
            dims = []
            for name in self.names:
                folder = self.root / name
                if not folder.is_dir():
                    raise DataError(f"feature set '{name}': folder not found: {folder}")
                uid = next(iter(self.shapes(name)), None)
                if uid is None or not self.path(name, uid).is_file():
                    first = next(iter(sorted(folder.glob("*.pt"))), None)
                    if first is None:
                        raise DataError(f"feature set '{name}': no .pt file in {folder}")
                    uid = first.stem
                dims.append(int(self.file_shape(name, uid)[1]))
            self._dims = dims
        return list(self._dims)

    def fingerprint_files(self, uids: list[str]) -> list[tuple[str, int, int]]:
        """``(path, size, mtime_ns)`` of every set's file of ``uids`` (cache keys)."""
        out = []
        for name in self.names:
            for uid in uids:
                stat = self.path(name, uid).stat()
                out.append((str(self.path(name, uid)), stat.st_size, stat.st_mtime_ns))
        return out

    def __getstate__(self) -> dict:
        """DataLoader workers start with an empty cache instead of a copy of the parent's."""
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state

    @classmethod
    def from_config(cls, cfg, data_root: str | os.PathLike) -> "FeatureStore":
        """From the ``data.features`` node: ``{root, names, per, rate, rates, cache_size, length_tolerance}``."""
        root = Path(cfg["root"])
        if not root.is_absolute():
            root = Path(data_root) / root
        rate = cfg.get("rate", None)
        return cls(root=root, names=list(cfg["names"]), per=cfg.get("per", "clip"),
                   rate=None if rate is None else float(rate), rates=dict(cfg.get("rates") or {}),
                   cache_size=cfg.get("cache_size", 4),
                   length_tolerance=int(cfg.get("length_tolerance", LENGTH_TOLERANCE)))
