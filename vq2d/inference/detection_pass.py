"""The detection pass (docs/vq2d.md#detection-pass): every query's top detections on frames 0..query_frame-1.

Two modes give the same detections:

* ``batched`` (default): per clip, every needed frame is decoded once in one sequential
  pass (the crop frames first, then frames 0..max query_frame-1), backbone + FPN + RPN run
  once per frame in mini-batches of ``frames_per_batch`` (``SiamRCNN.extract_frames``),
  each visual crop is encoded once (``encode_crops``) and all the clip's queries whose
  search window contains the frame are scored against its proposals in one head call
  (``detect``).
* ``per_query``: what the reference does; each query reads its frames again and runs the
  whole detector on (frame, crop) pairs (``SiamRCNN.forward``). Kept for the benchmark.

Frames may first be resized to ``frame_height`` (the reference uses 700); the model then
applies its own resize (``min_size``/``max_size``, overridable here). Boxes come back in
the annotation's original pixels.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from episodic.errors import DataError
from episodic.io import atomic_open
from vq2d.data.annotations import VQQuery
from vq2d.data.crops import make_visual_crop
from vq2d.inference.frame_source import ClipFrames, frames_past_the_end, search_window
from vq2d.modeling.siamrcnn import FrameProposals, SiamRCNN

MODES = ("batched", "per_query")


@dataclass
class QueryDetections:
    """Top detections of one query on each searched frame ``t = 0 .. T-1`` (T = query frame).

    boxes: ``[T, k, 4]`` float32 xyxy in original-resolution pixels.
    scores: ``[T, k]`` float32 probabilities, decreasing along k; 0 past ``counts[t]``.
    counts: ``[T]`` int, detections kept on each frame (<= k).
    """

    boxes: np.ndarray
    scores: np.ndarray
    counts: np.ndarray

    @classmethod
    def empty(cls, num_frames: int, k: int) -> "QueryDetections":
        return cls(np.zeros((num_frames, k, 4), np.float32), np.zeros((num_frames, k), np.float32),
                   np.zeros(num_frames, np.int64))

    @property
    def num_frames(self) -> int:
        return len(self.counts)

    def set_frame(self, t: int, boxes: np.ndarray, scores: np.ndarray) -> None:
        """Store frame ``t``'s detections ``boxes: [n, 4]``, ``scores: [n]`` (n <= k, sorted)."""
        n = min(len(scores), self.scores.shape[1])
        self.boxes[t, :n] = boxes[:n]
        self.scores[t, :n] = scores[:n]
        self.counts[t] = n

    def frame(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame ``t``'s detections: ``boxes: [n, 4]``, ``scores: [n]``."""
        n = int(self.counts[t])
        return self.boxes[t, :n], self.scores[t, :n]

    def top_box(self, t: int) -> np.ndarray | None:
        """The highest-scoring box ``[4]`` of frame ``t``; None when it has no detection."""
        return self.boxes[t, 0].copy() if self.counts[t] > 0 else None

    def score_curve(self) -> np.ndarray:
        """``s[t]`` = the highest score on frame t (0 without detections), ``[T]`` float64."""
        return np.where(self.counts > 0, self.scores[:, 0], 0.0).astype(np.float64) if self.num_frames else np.zeros(0)

    def save(self, path: str | os.PathLike, fingerprint: str = "", inputs: Mapping | None = None) -> None:
        """Write an ``.npz`` atomically (``fingerprint``: the key of the ``inputs`` that made
        it, see :mod:`vq2d.inference.cache_keys`; the inputs are stored too, as JSON)."""
        with atomic_open(path, "wb") as f:
            np.savez(f, boxes=self.boxes, scores=self.scores, counts=self.counts, fingerprint=np.array(fingerprint),
                     inputs=np.array(json.dumps(inputs, sort_keys=True, default=str)))

    @staticmethod
    def load_inputs(path: str | os.PathLike) -> dict | None:
        """The inputs stored by :meth:`save` (None when the file has none or is unreadable)."""
        try:
            with np.load(path) as z:
                return json.loads(str(z["inputs"])) if "inputs" in z.files else None
        except (OSError, KeyError, ValueError):
            return None

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple["QueryDetections", str]:
        """(detections, fingerprint) from a file written by :meth:`save`."""
        try:
            with np.load(path) as z:
                return cls(z["boxes"], z["scores"], z["counts"]), str(z["fingerprint"])
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"{path}: unreadable detection file ({e})") from None


def frame_tensor(image: np.ndarray, frame_height: int | None, device: torch.device) -> tuple[Tensor, float, float]:
    """``[H, W, 3]`` uint8 RGB -> (``[3, h, w]`` float 0..255 on ``device``, x scale, y scale),
    resized to height ``frame_height`` (aspect kept) when given."""
    h, w = image.shape[:2]
    if frame_height and frame_height != h:
        new_w = max(int(round(w * frame_height / h)), 1)
        image = cv2.resize(image, (new_w, int(frame_height)), interpolation=cv2.INTER_LINEAR)
    sy, sx = image.shape[0] / h, image.shape[1] / w
    tensor = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1).float()
    return tensor, sx, sy


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class DetectionPass:
    """Runs a SiamRCNN over the search windows of a clip's queries.

    Args:
        model: the detector (put in eval mode here).
        device: where the model and frames live.
        mode: "batched" or "per_query" (see module docstring).
        frames_per_batch: frames per backbone call.
        frame_height: resize frames to this height before the model (None: as decoded).
        min_size, max_size: override the model's inference resize (short side / long-side
            cap); None keeps the model's.
    """

    def __init__(self, *, model: SiamRCNN, device: torch.device | str = "cpu", mode: str = "batched",
                 frames_per_batch: int = 8, frame_height: int | None = None, min_size: int | None = None,
                 max_size: int | None = None):
        if mode not in MODES:
            raise ValueError(f"detection mode must be one of {MODES}, got {mode!r}")
        if frames_per_batch < 1:
            raise ValueError(f"frames_per_batch must be >= 1, got {frames_per_batch}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        if min_size is not None:
            self.model.transform.min_size = (int(min_size),)
        if max_size is not None:
            self.model.transform.max_size = int(max_size)
        self.mode = mode
        self.frames_per_batch = int(frames_per_batch)
        self.frame_height = frame_height
        self.k = model.detections_per_frame

    @classmethod
    def from_config(cls, cfg: Mapping, model: SiamRCNN, device: torch.device | str) -> "DetectionPass":
        """From the ``detection`` group of configs/vq2d/eval.yaml."""
        return cls(model=model, device=device, mode=cfg["mode"], frames_per_batch=cfg["frames_per_batch"],
                   frame_height=cfg.get("frame_height"), min_size=cfg.get("min_size"),
                   max_size=cfg.get("max_size"))

    # -- helpers ------------------------------------------------------------------------
    def _crop_tensor(self, query: VQQuery, image: np.ndarray) -> Tensor:
        """The query's visual crop ``[3, S, S]`` float 0..255 (docs/vq2d.md#visual-crop)."""
        try:
            crop = make_visual_crop(image, query.visual_crop.xyxy, size=self.model.crop_size,
                                    context=self.model.crop_context)
        except DataError as e:
            raise DataError(f"query {query.name}: bad visual crop on frame "
                            f"{query.visual_crop.frame_number}: {e}") from None
        return torch.from_numpy(crop).to(self.device).permute(2, 0, 1).float()

    def _frames_to_tensors(self, images: Sequence[np.ndarray]) -> tuple[list[Tensor], list[tuple[float, float]]]:
        out = [frame_tensor(img, self.frame_height, self.device) for img in images]
        return [o[0] for o in out], [(o[1], o[2]) for o in out]

    @staticmethod
    def _store(dets: QueryDetections, t: int, result: Mapping[str, Tensor], scale: tuple[float, float]) -> None:
        sx, sy = scale
        boxes = result["boxes"].float().cpu().numpy() / np.array([sx, sy, sx, sy], dtype=np.float32)
        dets.set_frame(t, boxes, result["scores"].float().cpu().numpy())

    # -- the pass ----------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, frames: ClipFrames, queries: Sequence[VQQuery], progress=None
            ) -> tuple[dict[str, QueryDetections], dict[str, str]]:
        """Detections of each query of one clip.

        Returns ({query name: detections}, {query name: error}); a query whose crop cannot
        be made or whose query frame lies past the end of the clip gets an error and no
        detections. A failure of the clip itself (unreadable file, a frame that does not
        decode) raises DataError. ``progress``: optional callable(frames done)."""
        errors = frames_past_the_end(queries, frames.num_frames)
        runnable = [q for q in queries if q.name not in errors]
        run = self._run_batched if self.mode == "batched" else self._run_per_query
        detections = run(frames, runnable, errors, progress)
        return detections, errors

    def _run_batched(self, frames: ClipFrames, queries: Sequence[VQQuery], errors: dict[str, str], progress
                     ) -> dict[str, QueryDetections]:
        crop_images = frames.read(sorted({q.visual_crop.frame_number for q in queries}))
        ready, crops = [], []
        for q in queries:
            try:
                crops.append(self._crop_tensor(q, crop_images[q.visual_crop.frame_number]))
                ready.append(q)
            except DataError as e:
                errors[q.name] = str(e)
        out = {q.name: QueryDetections.empty(q.query_frame, self.k) for q in ready}
        if not ready:
            return out
        query_emb = self.model.encode_crops(torch.stack(crops))  # [Q, hidden], each crop once
        query_frames = torch.tensor([q.query_frame for q in ready], device=self.device)
        window = max(q.query_frame for q in ready)
        for batch in _batches(search_window(frames, window, crop_images), self.frames_per_batch):
            indices = [t for t, _ in batch]
            tensors, scales = self._frames_to_tensors([img for _, img in batch])
            proposals = self.model.extract_frames(tensors)  # backbone + FPN + RPN once per frame
            for i, t in enumerate(indices):
                active = torch.nonzero(query_frames > t).flatten()  # queries searching frame t
                one = FrameProposals([proposals.boxes[i]], [proposals.embeddings[i]], [proposals.image_sizes[i]])
                for j, result in zip(active.tolist(), self.model.detect(one, query_emb[active])[0]):
                    self._store(out[ready[j].name], t, result, scales[i])
            if progress is not None:
                progress(len(batch))
        return out

    def _run_per_query(self, frames: ClipFrames, queries: Sequence[VQQuery], errors: dict[str, str], progress
                       ) -> dict[str, QueryDetections]:
        out = {}
        for q in queries:
            image = frames.read([q.visual_crop.frame_number])[q.visual_crop.frame_number]
            try:
                crop = self._crop_tensor(q, image)
            except DataError as e:
                errors[q.name] = str(e)
                continue
            dets = QueryDetections.empty(q.query_frame, self.k)
            for batch in _batches(frames.iter_frames(range(q.query_frame)), self.frames_per_batch):
                tensors, scales = self._frames_to_tensors([img for _, img in batch])
                results = self.model(tensors, crop.unsqueeze(0).expand(len(batch), -1, -1, -1))
                for (t, _), result, scale in zip(batch, results, scales):
                    self._store(dets, t, result, scale)
                if progress is not None:
                    progress(len(batch))
            out[q.name] = dets
        return out
