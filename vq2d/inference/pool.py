"""Run the inference pipeline over a split on a pool of workers, resumably, and merge.

* Sharding: the clips still to do are split into ``workers`` shards of similar cost (frames
  searched), largest first onto the least loaded shard; each shard runs :func:`run_shard`
  as one job of ``episodic.launch.submit_array`` (local processes, or a SLURM array), one
  GPU each when there are GPUs. ``workers=1`` with the local launcher runs in-process.
* Resume: each clip's answers go to ``OUT/clips/<clip_uid>.json`` (atomic) with a
  fingerprint of the settings; detections to ``OUT/detections/<query>.npz``. A clip whose
  file exists with the same fingerprint and no failed query is not redone, so a rerun
  after a kill redoes only unfinished clips (and shards with no clip left are not started).
* Merge: :func:`collect_outcomes` reads every clip file of the split; a clip without one
  (its shard died) has its queries reported as failed, i.e. scored as empty tracks.

``settings`` is the plain dict made by :func:`vq2d.inference.evaluate.resolve_settings`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from episodic.io import atomic_write_json, read_json
from episodic.logging import progress, setup_logging
from vq2d.data.annotations import VQAnnotationFile, VQQuery, load_vq_annotations
from vq2d.data.frame_cache import FrameCache
from vq2d.inference.checkpoint_io import load_detector
from vq2d.inference.detection_pass import DetectionPass
from vq2d.inference.frame_source import ClipFrames, original_size_of
from vq2d.inference.pipeline import QueryOutcome, TrackingSettings, process_clip
from vq2d.inference.peaks import PeakParams
from vq2d.inference.released_detections import ReleasedDetections

logger = logging.getLogger(__name__)

CLIPS_DIR = "clips"
DETECTIONS_DIR = "detections"
_DETECTION_KEYS = ("frame_height", "min_size", "max_size")  # detection settings that change the detections


def fingerprint(obj: Any) -> str:
    """A short stable hash of JSON-able ``obj``."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def detection_fingerprint(settings: Mapping) -> str:
    """What the cached detections depend on: the checkpoint file and the frame resizing."""
    det = settings["detection"]
    return fingerprint({"checkpoint": settings["checkpoint_id"], "model": settings.get("model"),
                        **{k: det.get(k) for k in _DETECTION_KEYS}})


def result_fingerprint(settings: Mapping) -> str:
    """What a clip's answers depend on: the detections, peak and tracking settings."""
    return fingerprint({"detections": detection_fingerprint(settings), "peaks": settings["peaks"],
                        "tracking": settings["tracking"]})


# Clips and shards ---------------------------------------------------------------------------
def queries_by_clip(queries: Sequence[VQQuery]) -> dict[str, list[VQQuery]]:
    """clip_uid -> its queries, clips and queries in file order."""
    out: dict[str, list[VQQuery]] = defaultdict(list)
    for q in queries:
        out[q.clip_uid].append(q)
    return dict(out)


def clip_cost(queries: Sequence[VQQuery]) -> int:
    """Frames a clip's detection pass reads: the largest query frame (at least 1)."""
    return max([q.query_frame for q in queries] + [1])


def shard_clips(costs: Mapping[str, int], num_shards: int) -> list[list[str]]:
    """Split clips into ``num_shards`` lists of similar total cost (greedy, largest clip first
    onto the least loaded shard; ties by shard index). Deterministic; each list keeps the
    order of ``costs``; empty shards are dropped."""
    if num_shards < 1:
        raise ValueError(f"workers must be >= 1, got {num_shards}")
    order = {clip: i for i, clip in enumerate(costs)}
    loads = [0] * num_shards
    shards: list[list[str]] = [[] for _ in range(num_shards)]
    for clip in sorted(costs, key=lambda c: (-costs[c], order[c])):
        s = min(range(num_shards), key=lambda i: (loads[i], i))
        shards[s].append(clip)
        loads[s] += costs[clip]
    return [sorted(s, key=order.__getitem__) for s in shards if s]


def clip_result_path(output_dir: str | os.PathLike, clip_uid: str) -> Path:
    return Path(output_dir) / CLIPS_DIR / f"{clip_uid}.json"


def read_clip_result(output_dir: str | os.PathLike, clip_uid: str) -> dict | None:
    path = clip_result_path(output_dir, clip_uid)
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except Exception as e:  # noqa: BLE001 - a damaged result is redone
        logger.warning("%s: %s; the clip is redone", path, e)
        return None


def clip_done(output_dir: str | os.PathLike, clip_uid: str, result_fp: str) -> bool:
    """The clip's answers are on disk, made with the same settings, with no failed query."""
    result = read_clip_result(output_dir, clip_uid)
    return (result is not None and result.get("fingerprint") == result_fp
            and not any(q.get("error") for q in result.get("queries", [])))


# One shard ------------------------------------------------------------------------------------
def resolve_device(name: str) -> str:
    """"auto" -> "cuda" when this machine has a GPU, else "cpu"; anything else as given."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def clip_frames(settings: Mapping, clip_uid: str, queries: Sequence[VQQuery]) -> ClipFrames:
    """The frames of a clip as the settings say (clip folder, optional JPEG cache)."""
    cache = FrameCache(settings["cache_root"]) if settings.get("cache_root") else None
    return ClipFrames(clip_uid, Path(settings["clips_dir"]) / f"{clip_uid}.mp4", clip_fps=queries[0].clip_fps,
                      original_size=original_size_of(queries), cache=cache,
                      decode_threads=settings["detection"].get("decode_threads", 0))


def run_shard(task: Mapping[str, Any]) -> dict:
    """Answer the queries of ``task["clip_uids"]`` (the submitit entry point of one shard).

    task: {"shard": index, "clip_uids": [...], "settings": resolve_settings(...),
    "in_process": bool}. Returns {"shard", "clips_done", "clips_skipped", "failed_queries"}."""
    settings = task["settings"]
    if not task.get("in_process"):
        setup_logging(None)
    torch.set_num_threads(int(settings["threads_per_worker"]))
    out = Path(settings["output_dir"])
    result_fp = result_fingerprint(settings)
    det_fp = detection_fingerprint(settings)
    annotations = load_vq_annotations(settings["annotations"], strict=False)
    by_clip = queries_by_clip(annotations.queries())
    todo = [c for c in task["clip_uids"] if not (settings["resume"] and clip_done(out, c, result_fp))]
    summary = {"shard": task["shard"], "clips_done": 0, "clips_skipped": len(task["clip_uids"]) - len(todo),
               "failed_queries": 0}
    if not todo:
        return summary
    if settings.get("detections"):  # released precomputed detections: no model
        detector = ReleasedDetections(settings["detections"])
    else:
        device = torch.device(resolve_device(settings["device"]))
        model = load_detector(settings["checkpoint"], device, settings.get("model"))
        detector = DetectionPass.from_config(settings["detection"], model, device)
    peaks = PeakParams.from_config(settings["peaks"])
    tracking = TrackingSettings.from_config(settings["tracking"])
    bar = progress(total=sum(clip_cost(by_clip[c]) for c in todo), desc=f"shard {task['shard']} frames",
                   unit="frame")
    for clip_uid in todo:
        queries = by_clip[clip_uid]
        with clip_frames(settings, clip_uid, queries) as frames:
            outcomes = process_clip(queries, frames=frames, detector=detector, peaks=peaks, tracking=tracking,
                                    detections_dir=out / DETECTIONS_DIR, fingerprint=det_fp,
                                    reuse_detections=settings["resume"], progress=bar.update)
        atomic_write_json(clip_result_path(out, clip_uid), {"clip_uid": clip_uid, "fingerprint": result_fp,
                                                            "queries": [o.to_dict() for o in outcomes]})
        summary["clips_done"] += 1
        summary["failed_queries"] += sum(o.error is not None for o in outcomes)
        logger.info("clip %s: %d queries, %d failed", clip_uid, len(outcomes),
                    sum(o.error is not None for o in outcomes))
    bar.close()
    return summary


# The pool -------------------------------------------------------------------------------------
def _launch(tasks: list[dict], settings: Mapping) -> list[dict]:
    """Run the shard tasks with episodic.launch; a failed shard is logged, not raised."""
    from episodic.launch import submit_array

    launcher = dict(settings["launcher"])
    jobs = submit_array(
        run_shard, tasks, executor=launcher["executor"], folder=launcher["folder"], name=launcher["name"],
        gpus_per_node=int(settings["gpus_per_worker"]), tasks_per_node=1, nodes=1,
        cpus_per_task=launcher.get("cpus_per_task"), mem_gb=launcher.get("mem_gb"),
        timeout_min=launcher.get("timeout_min", 60), partition=launcher.get("partition"),
        array_parallelism=launcher.get("array_parallelism"), slurm_extra=launcher.get("slurm_extra"),
        max_requeues=launcher.get("max_requeues", 3))
    summaries = []
    for task, job in zip(tasks, jobs):
        try:
            summaries.append(job.result())
        except Exception as e:  # noqa: BLE001 - the merge reports the shard's clips as failed
            logger.error("shard %d (job %s) failed: %s; logs: %s", task["shard"], job.job_id,
                         str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__, job.paths.stderr)
    return summaries


def run_pool(settings: Mapping, annotations: VQAnnotationFile) -> list[dict]:
    """Answer every query of ``annotations`` into ``settings["output_dir"]`` (see module doc).
    Returns the shard summaries."""
    out = Path(settings["output_dir"])
    result_fp = result_fingerprint(settings)
    by_clip = queries_by_clip(annotations.queries())
    pending = {c: clip_cost(qs) for c, qs in by_clip.items()
               if not (settings["resume"] and clip_done(out, c, result_fp))}
    logger.info("%d clips, %d to do (%d already done)", len(by_clip), len(pending), len(by_clip) - len(pending))
    if not pending:
        return []
    shards = shard_clips(pending, int(settings["workers"]))
    tasks = [{"shard": i, "clip_uids": clips, "settings": dict(settings)} for i, clips in enumerate(shards)]
    if settings["launcher"]["executor"] == "local" and int(settings["workers"]) <= 1:
        return [run_shard({**task, "in_process": True}) for task in tasks]
    return _launch(tasks, settings)


def collect_outcomes(output_dir: str | os.PathLike, queries: Sequence[VQQuery],
                     result_fp: str | None = None) -> dict[str, QueryOutcome]:
    """Query name -> outcome for every query, from the clip result files; queries without a
    result (or, when ``result_fp`` is given, with one made with other settings) are
    reported as failed."""
    results: dict[str, QueryOutcome] = {}
    for clip_uid, clip_queries in queries_by_clip(queries).items():
        found = read_clip_result(output_dir, clip_uid) or {"queries": []}
        if result_fp is not None and found.get("fingerprint", result_fp) != result_fp:
            found = {"queries": []}
        stored = {d["name"]: QueryOutcome.from_dict(d) for d in found["queries"]}
        for q in clip_queries:
            results[q.name] = stored.get(q.name) or QueryOutcome.failed(
                q, f"no result for clip {clip_uid} (its shard failed or was killed; see the submitit logs)")
    return results
