"""Run the inference pipeline over a split on a pool of workers, resumably, and merge.

* Sharding: the clips still to do are split into ``workers`` shards of similar cost (frames
  searched), largest first onto the least loaded shard; each shard runs :func:`run_shard`
  as one job of ``episodic.launch.submit_array`` (local processes, or a SLURM array), one
  GPU each when there are GPUs. ``workers=1`` with the local launcher runs in-process.
* Resume: each clip's answers go to ``OUT/clips/<clip_uid>.json`` (atomic) with, per query,
  everything the answer depends on (:mod:`vq2d.inference.cache_keys`: the checkpoint's
  content, the clip's frames, the query's crop and query frame, the settings); detections
  to ``OUT/detections/<query>.npz``, keyed the same way. A clip whose every query has an
  answer made with the same inputs and no error is not redone, so a rerun after a kill
  redoes only unfinished clips (and shards with no clip left are not started); a rerun
  with changed annotations, weights, frames or settings redoes what they change and logs
  one line per reason (``clip X: query 0_2's visual crop changed; recomputing``).
* Merge: :func:`collect_outcomes` reads every clip file of the split; a clip without one
  (its shard died) has its queries reported as failed, i.e. scored as empty tracks.

``settings`` is the plain dict made by :func:`vq2d.inference.evaluate.resolve_settings`.
"""
from __future__ import annotations

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
from vq2d.inference.cache_keys import changes, clip_answer_inputs, query_label
from vq2d.inference.checkpoint_io import load_detector
from vq2d.inference.detection_pass import DetectionPass
from vq2d.inference.frame_source import ClipFrames, original_size_of
from vq2d.inference.pipeline import QueryOutcome, TrackingSettings, process_clip
from vq2d.inference.peaks import PeakParams
from vq2d.inference.released_detections import ReleasedDetections

logger = logging.getLogger(__name__)

CLIPS_DIR = "clips"
DETECTIONS_DIR = "detections"
MAX_REASON_LINES = 50  # "recomputing" lines logged per run


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


def clip_status(output_dir: str | os.PathLike, clip_uid: str, queries: Sequence[VQQuery],
                settings: Mapping) -> tuple[bool, list[str]]:
    """(done, reasons): done when every query of the clip has an answer on disk made with
    the same inputs (:func:`vq2d.inference.cache_keys.answer_inputs`) and no error; else the
    reasons to redo it, one per changed input (none when there is no result yet)."""
    result = read_clip_result(output_dir, clip_uid)
    if result is None:
        return False, []
    stored = {d.get("name"): d for d in result.get("queries", [])}
    inputs = result.get("inputs") if isinstance(result.get("inputs"), dict) else None
    reasons: list[str] = []
    expected = clip_answer_inputs(settings, clip_uid, queries)
    for q in queries:
        label = query_label(q)
        if inputs is None:
            reasons += changes(None, expected[q.name])
        elif q.name not in stored or q.name not in inputs:
            reasons.append(f"{label} is new")
        else:
            reasons += changes(inputs[q.name], expected[q.name], label)
            if stored[q.name].get("error"):
                error = str(stored[q.name]["error"]).strip().splitlines()[0] if str(stored[q.name]["error"]).strip() else "?"
                reasons.append(f"{label} failed last time ({error})")
    reasons = list(dict.fromkeys(reasons))
    return not reasons, reasons


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
                      decode_threads=(settings.get("detection") or {}).get("decode_threads", 0))


def run_shard(task: Mapping[str, Any]) -> dict:
    """Answer the queries of ``task["clip_uids"]`` (the submitit entry point of one shard).

    task: {"shard": index, "clip_uids": [...], "settings": resolve_settings(...),
    "in_process": bool}. Returns {"shard", "clips_done", "clips_skipped", "failed_queries"}."""
    settings = task["settings"]
    if not task.get("in_process"):
        setup_logging(None)
    torch.set_num_threads(int(settings["threads_per_worker"]))
    out = Path(settings["output_dir"])
    annotations = load_vq_annotations(settings["annotations"], strict=False)
    by_clip = queries_by_clip(annotations.queries())
    todo = [c for c in task["clip_uids"] if not (settings["resume"] and clip_status(out, c, by_clip[c], settings)[0])]
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
        inputs = clip_answer_inputs(settings, clip_uid, queries)  # before reading: what the answers are made of
        with clip_frames(settings, clip_uid, queries) as frames:
            outcomes = process_clip(queries, frames=frames, detector=detector, peaks=peaks, tracking=tracking,
                                    detections_dir=out / DETECTIONS_DIR, inputs=inputs,
                                    reuse_detections=settings["resume"], progress=bar.update)
        atomic_write_json(clip_result_path(out, clip_uid), {"clip_uid": clip_uid, "inputs": inputs,
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
    by_clip = queries_by_clip(annotations.queries())
    pending, lines = {}, []
    for clip_uid, qs in by_clip.items():
        done, reasons = clip_status(out, clip_uid, qs, settings) if settings["resume"] else (False, [])
        if not done:
            pending[clip_uid] = clip_cost(qs)
            lines += [f"clip {clip_uid}: {reason}; recomputing" for reason in reasons]
    for line in lines[:MAX_REASON_LINES]:
        logger.info(line)
    if len(lines) > MAX_REASON_LINES:
        logger.info("... and %d more such lines", len(lines) - MAX_REASON_LINES)
    logger.info("%d clips, %d to do (%d already done)", len(by_clip), len(pending), len(by_clip) - len(pending))
    if not pending:
        return []
    shards = shard_clips(pending, int(settings["workers"]))
    tasks = [{"shard": i, "clip_uids": clips, "settings": dict(settings)} for i, clips in enumerate(shards)]
    if settings["launcher"]["executor"] == "local" and int(settings["workers"]) <= 1:
        return [run_shard({**task, "in_process": True}) for task in tasks]
    return _launch(tasks, settings)


def collect_outcomes(output_dir: str | os.PathLike, queries: Sequence[VQQuery],
                     settings: Mapping | None = None) -> dict[str, QueryOutcome]:
    """Query name -> outcome for every query, from the clip result files; queries without a
    result (or, when ``settings`` are given, with one made from other inputs) are reported
    as failed."""
    results: dict[str, QueryOutcome] = {}
    for clip_uid, clip_queries in queries_by_clip(queries).items():
        found = read_clip_result(output_dir, clip_uid) or {"queries": []}
        stored = {d["name"]: QueryOutcome.from_dict(d) for d in found["queries"]}
        if settings is not None:
            made_with = found.get("inputs") if isinstance(found.get("inputs"), dict) else {}
            expected = clip_answer_inputs(settings, clip_uid, clip_queries)
            stored = {name: o for name, o in stored.items()
                      if name in expected and not changes(made_with.get(name), expected[name])}
        for q in clip_queries:
            results[q.name] = stored.get(q.name) or QueryOutcome.failed(
                q, f"no result for clip {clip_uid} (its shard failed or was killed; see the submitit logs)")
    return results
