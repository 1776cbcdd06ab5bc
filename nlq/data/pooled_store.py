"""Clip features stored once on disk, shared by every DataLoader worker and rank
(docs/architecture.md#caches, docs/nlq.md#features).

A store holds the features of a fixed list of clips, each already pooled to ``pool_len``
steps (:func:`~nlq.data.features.pool_to_max_len`; ``None``: unpooled, for training
augmentations that need every step), as rows of one float32 ``.npy`` file ``[rows, D]``
plus an index (clip -> first row, rows, steps before pooling). Samples are read with
``os.preadv`` straight into a fresh array, so a process keeps nothing but what it is
using: the operating system's page cache (shared, evictable) is the only cache, and memory
does not grow with the number of clips or epochs.

Folder ``<store_dir>/<key>/``: ``features.npy``, ``index.json`` (and ``manifest.json``,
what the key covers). ``key`` is a hash of everything that determines the content: the
feature sets (names, rates, per-clip/per-video, root), the clip list with each clip's video
times, every feature file's size and modification time, ``pool_len`` and the store format.
A changed input gives a new key; the log says which part changed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from episodic import distributed
from episodic.io import atomic_write_json, read_json
from nlq.data.features import POOLING, FeatureStore

log = logging.getLogger(__name__)

STORE_FORMAT = 1
ClipArgs = tuple  # (clip_uid, video_uid, video_start_sec, video_end_sec)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class StoreKey:
    """What determines a store's content, digested per part (so a rebuild can say why)."""

    settings: dict
    clips: str
    files: str

    @property
    def key(self) -> str:
        return _digest([self.settings, self.clips, self.files])[:20]

    def as_dict(self) -> dict:
        return {"settings": self.settings, "clips": self.clips, "files": self.files, "key": self.key}

    @classmethod
    def of(cls, features: FeatureStore, clips: list[ClipArgs], pool_len: int | None,
           pooling: str = "exact") -> "StoreKey":
        uids = sorted({c[0] if features.per == "clip" else c[1] for c in clips})
        settings = {"format": STORE_FORMAT, "root": str(features.root), "names": features.names,
                    "rates": features.rates, "per": features.per, "pool_len": pool_len,
                    "pooling": pooling}
        return cls(settings=settings, clips=_digest(sorted(map(list, clips))),
                   files=_digest(features.fingerprint_files(uids)))

    def why_new(self, other: dict) -> str:
        """What differs from another store's manifest (one line)."""
        changed = []
        for name in ("root", "names", "rates", "per", "pool_len", "format"):
            if other.get("settings", {}).get(name) != self.settings[name]:
                changed.append(f"{name} {other.get('settings', {}).get(name)!r} -> {self.settings[name]!r}")
        if other.get("clips") != self.clips:
            changed.append("the clip list or a clip's video times")
        if other.get("files") != self.files:
            changed.append("feature files (size or modification time)")
        return ", ".join(changed) or "nothing (an unfinished build)"


class PooledStore:
    """Read side of a store: ``get(clip) -> (features [L, D] float32, steps before pooling)``.

    Pickles as its folder and index only; each process opens the file on first use.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index = read_json(self.folder / "index.json")
        self.dim = int(index["dim"])
        self.pool_len = index["pool_len"]
        self.pooling = index.get("pooling", "exact")  # data.preparation whose pooling rule made it
        self.offset = int(index["offset"])  # bytes before row 0 (the .npy header)
        self.rows = {tuple(c[:4]): (int(c[4]), int(c[5]), int(c[6])) for c in index["clips"]}
        self._fd: int | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, clip: ClipArgs) -> bool:
        return tuple(clip) in self.rows

    def get(self, clip: ClipArgs) -> tuple[torch.Tensor, int]:
        row, length, raw_steps = self.rows[tuple(clip)]
        if self._fd is None or self._pid != os.getpid():  # one descriptor per process (forked workers too)
            self._fd = os.open(self.folder / "features.npy", os.O_RDONLY)
            self._pid = os.getpid()
        out = np.empty((length, self.dim), dtype=np.float32)
        want = out.nbytes
        got = os.preadv(self._fd, [out], self.offset + row * self.dim * 4)
        if got != want:
            raise OSError(f"{self.folder / 'features.npy'}: short read ({got} of {want} bytes); "
                          "the store is damaged, delete the folder to rebuild it")
        return torch.from_numpy(out), raw_steps

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fd"], state["_pid"] = None, None
        return state

    def __del__(self):
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass


def _write_store(folder: Path, features: FeatureStore, clips: list[ClipArgs], pool_len: int | None,
                 key: StoreKey, name: str, pooling: str = "exact") -> None:
    """Write the store into ``folder`` (a fresh folder): one clip in memory at a time."""
    folder.mkdir(parents=True)
    dim = sum(features.dims)
    order = sorted(range(len(clips)), key=lambda i: (str(clips[i][1]), str(clips[i][0])))  # per-video files once
    lengths = {}
    for i in order:
        steps = features.num_steps(*clips[i])
        lengths[i] = (steps, steps if pool_len is None else min(steps, pool_len))
    total = sum(length for _, length in lengths.values())
    index, row = [], 0
    with open(folder / "features.npy", "wb") as f:
        np.lib.format.write_array_header_2_0(f, {"descr": "<f4", "fortran_order": False, "shape": (total, dim)})
        offset = f.tell()
        for i in order:
            feat = features.clip_features(*clips[i])  # [T, D]
            if pool_len is not None:
                feat = POOLING[pooling](feat, pool_len)
            steps, length = lengths[i]
            if feat.shape[0] != length:  # the file's data disagrees with its header shape
                raise OSError(f"clip {clips[i][0]}: features changed while the store was built; rebuild")
            f.write(np.ascontiguousarray(feat.numpy(), dtype=np.float32).tobytes())
            index.append([*clips[i], row, length, steps])
            row += length
        f.flush()
        os.fsync(f.fileno())
    atomic_write_json(folder / "manifest.json", {**key.as_dict(), "name": name}, indent=1)
    atomic_write_json(folder / "index.json", {"dim": dim, "pool_len": pool_len, "pooling": pooling, "offset": offset, "clips": index})


def _latest_manifest(store_dir: Path, exclude: str, name: str) -> dict | None:
    """The newest other store's manifest of the same name (e.g. the train split's)."""
    manifests = [p for p in store_dir.glob("*/manifest.json") if p.parent.name != exclude]
    manifests = [m for m in (read_json(p) | {"_mtime": p.stat().st_mtime} for p in manifests) if m.get("name") == name]
    return max(manifests, key=lambda m: m["_mtime"]) if manifests else None


def open_or_build_store(features: FeatureStore, clips: list[ClipArgs], pool_len: int | None,
                        store_dir: str | os.PathLike, name: str = "", pooling: str = "exact") -> PooledStore:
    """The store of ``clips`` under ``store_dir`` for these features and ``pool_len``: reused
    when one with the same key exists, else built (by the main process; the other ranks
    wait, and build their own only when the folder is not visible from their node).
    ``pooling``: the ``data.preparation`` whose pooling rule makes it (:data:`POOLING`)."""
    clips = list(dict.fromkeys(tuple(c) for c in clips))
    store_dir = Path(store_dir)
    key = StoreKey.of(features, clips, pool_len, pooling)
    folder = store_dir / key.key
    label = f"feature store {name + ' ' if name else ''}{folder}"
    if (folder / "index.json").is_file():
        log.info("%s: reusing (%d clips, same feature files, clips and pooling)", label, len(clips))
    elif distributed.is_main_process():
        _build(features, clips, pool_len, store_dir, key, label, name, pooling)
    distributed.barrier()  # every rank once, whether its node sees the store or not
    if not (folder / "index.json").is_file():  # a node-local store_dir on another node
        _build(features, clips, pool_len, store_dir, key, label, name, pooling)
    return PooledStore(folder)


def _build(features: FeatureStore, clips: list[ClipArgs], pool_len: int | None, store_dir: Path,
           key: StoreKey, label: str, name: str, pooling: str = "exact") -> None:
    store_dir.mkdir(parents=True, exist_ok=True)
    previous = _latest_manifest(store_dir, exclude=key.key, name=name)
    why = "no store yet" if previous is None else f"changed since the last store: {key.why_new(previous)}"
    log.info("%s: building %d clips, pooled to %s steps (%s)", label, len(clips), pool_len or "no fewer", why)
    tmp = store_dir / f".{key.key}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_store(tmp, features, clips, pool_len, key, name, pooling)
        try:
            os.replace(tmp, store_dir / key.key)
        except OSError:  # another process finished the same store first
            if not (store_dir / key.key / "index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
