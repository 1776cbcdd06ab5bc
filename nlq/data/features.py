"""Pre-extracted NLQ video features (DESIGN 4.4, 6.2).

Layout of one feature set ``name`` under ``root``::

    <root>/<name>/<uid>.pt              # float tensor [T, D]
    <root>/<name>/feature_shapes.json   # {uid: T}, optional (lengths without loading)

``uid`` is a clip_uid (``per="clip"``) or a video_uid (``per="video"``: a clip is then the
slice ``feat[int(s * rate) : int(e * rate) + 1]`` of its canonical video, ``s, e`` the
clip's bounds in video seconds). Several sets (e.g. SlowFast + CLIP for ReLER) are
concatenated along D after cropping them to a common length.
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from pathlib import Path

import torch

from episodic.errors import DataError
from episodic.io import read_json

FEATURES_PER_SECOND = 1.875  # SlowFast: 32-frame windows, stride 16 at 30 fps


def pool_to_max_len(feat: torch.Tensor, max_len: int) -> torch.Tensor:
    """Mean-pool ``feat [T, D]`` to ``[min(T, max_len), D]`` (VSLNet, DESIGN 6.2).

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


class FeatureStore:
    """Loads (and caches) one or several feature sets and returns per-clip ``[T, sum(D)]``.

    Args:
        root: folder holding one sub-folder per feature set.
        names: feature-set names (sub-folders), concatenated along D in this order.
        per: "clip" (files named by clip_uid) or "video" (files named by video_uid).
        rate: features per second, used to slice per-video features and to convert a
            number of steps into covered seconds.
        cache_size: loaded files kept in memory (LRU); None = unlimited, 0 = no cache.
    """

    def __init__(self, root: str | os.PathLike, names: list[str] | tuple[str, ...], per: str = "clip",
                 rate: float = FEATURES_PER_SECOND, cache_size: int | None = None):
        if per not in ("clip", "video"):
            raise ValueError(f"per must be 'clip' or 'video' (got {per!r})")
        if isinstance(names, str) or not names:
            raise ValueError(f"names must be a non-empty list of feature-set names (got {names!r})")
        self.root = Path(root)
        self.names = list(names)
        self.per = per
        self.rate = float(rate)
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._shapes: dict[str, dict[str, int]] = {}
        self._dims: list[int] | None = None
        self._warned: set[str] = set()

    def path(self, name: str, uid: str) -> Path:
        return self.root / name / f"{uid}.pt"

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

    def load(self, name: str, uid: str, clip_uid: str | None = None) -> torch.Tensor:
        """The whole tensor ``[T, D]`` of ``<root>/<name>/<uid>.pt`` (cached)."""
        key = (name, uid)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        path = self.path(name, uid)
        what = f"clip {clip_uid}" if clip_uid is not None else f"{self.per} {uid}"
        if not path.is_file():
            raise DataError(f"features '{name}' for {what}: file not found: {path}")
        try:
            feat = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
            raise DataError(f"features '{name}' for {what}: cannot read {path}: {e}") from None
        if not isinstance(feat, torch.Tensor) or feat.ndim != 2 or not feat.is_floating_point():
            desc = tuple(feat.shape) if isinstance(feat, torch.Tensor) else type(feat).__name__
            raise DataError(f"features '{name}' for {what}: {path} must hold a float tensor [T, D] "
                            f"(got {desc})")
        feat = feat.float()
        if self.cache_size != 0:
            self._cache[key] = feat
            if self.cache_size is not None and len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return feat

    # Per-clip access ---------------------------------------------------------------------
    def clip_features(self, clip_uid: str, video_uid: str | None = None,
                      video_start_sec: float | None = None, video_end_sec: float | None = None
                      ) -> torch.Tensor:
        """Features of one clip, ``[T, sum(dims)]`` (sets cropped to the shortest length).

        ``video_uid`` and the clip's bounds in video seconds are needed when ``per="video"``.
        """
        parts = [self._one_set(name, clip_uid, video_uid, video_start_sec, video_end_sec)
                 for name in self.names]
        if len(parts) == 1:
            return parts[0]
        lengths = [p.shape[0] for p in parts]
        if max(lengths) - min(lengths) > 1 and clip_uid not in self._warned:
            self._warned.add(clip_uid)
            warnings.warn(f"clip {clip_uid}: feature sets {self.names} have lengths {lengths}; "
                          f"cropping all to {min(lengths)}", RuntimeWarning, stacklevel=2)
        shortest = min(lengths)
        return torch.cat([p[:shortest] for p in parts], dim=1)

    def _one_set(self, name: str, clip_uid: str, video_uid: str | None,
                 start: float | None, end: float | None) -> torch.Tensor:
        if self.per == "clip":
            return self.load(name, clip_uid)
        if video_uid is None or start is None or end is None:
            raise ValueError(f"clip {clip_uid}: per-video features need video_uid and the clip's "
                             "video_start_sec / video_end_sec")
        feat = self.load(name, video_uid, clip_uid=clip_uid)[video_slice(start, end, self.rate)]
        if feat.shape[0] == 0:
            raise DataError(f"features '{name}' for clip {clip_uid}: {self.path(name, video_uid)} "
                            f"has no step in [{start:g}, {end:g}] s of video {video_uid}")
        return feat

    def num_steps(self, clip_uid: str, video_uid: str | None = None,
                  video_start_sec: float | None = None, video_end_sec: float | None = None) -> int:
        """Length T of :meth:`clip_features` without loading, when ``feature_shapes.json`` knows it."""
        lengths = []
        for name in self.names:
            uid = clip_uid if self.per == "clip" else video_uid
            total = self.shapes(name).get(uid) if uid is not None else None
            if total is None:
                return self.clip_features(clip_uid, video_uid, video_start_sec, video_end_sec).shape[0]
            if self.per == "video":
                steps = video_slice(video_start_sec, video_end_sec, self.rate)
                total = max(0, min(total, steps.stop) - steps.start)
            lengths.append(total)
        return min(lengths)

    def covered_seconds(self, num_steps: int) -> float:
        return num_steps / self.rate

    @property
    def dims(self) -> list[int]:
        """Feature size D of each set, in ``names`` order (reads one file per set once)."""
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
                dims.append(int(self.load(name, uid).shape[1]))
            self._dims = dims
        return list(self._dims)

    def __getstate__(self) -> dict:
        """DataLoader workers start with an empty cache instead of a copy of the parent's."""
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state

    @classmethod
    def from_config(cls, cfg, data_root: str | os.PathLike) -> "FeatureStore":
        """From the ``data.features`` node: ``{root, names, per, rate, cache_size}``."""
        root = Path(cfg["root"])
        if not root.is_absolute():
            root = Path(data_root) / root
        return cls(root=root, names=list(cfg["names"]), per=cfg.get("per", "clip"),
                   rate=float(cfg.get("rate", FEATURES_PER_SECOND)),
                   cache_size=cfg.get("cache_size", None))
