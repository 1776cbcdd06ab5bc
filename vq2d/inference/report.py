"""From the merged query outcomes to the files a user reads: the predictions file (or the
test submission), the scores of that file, per-query diagnostics and plots.

STYLE 5: the predictions are written to a file first, then THAT file is read back and
scored with :mod:`vq2d.evaluation.scoring`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

from episodic.cli import failure_fields
from episodic.errors import DataError
from episodic.io import atomic_write_json, read_json
from vq2d.data.annotations import VQAnnotationFile, VQQuery
from vq2d.data.crops import make_visual_crop
from vq2d.evaluation.ground_truth import query_name, valid_query_sets
from vq2d.evaluation.metrics import METRIC_KEYS, QueryResult, search_efficiency
from vq2d.evaluation.scoring import METRICS_FILE, Scores, score_submission, write_scores
from vq2d.evaluation.submission import build_submission, write_submission
from vq2d.evaluation.validate import validate_submission
from vq2d.inference.detection_pass import QueryDetections
from vq2d.inference.peaks import PeakParams
from vq2d.inference.pipeline import QueryOutcome, curve_arrays, detection_path
from vq2d.inference.plots import plot_false_positive_gallery, plot_score_curve, top_false_positives, write_track_gif
from vq2d.inference.pool import DETECTIONS_DIR, clip_frames, queries_by_clip

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.json"
SUBMISSION_FILE = "submission.json"
DIAGNOSTICS_FILE = "per_query.json"
PLOTS_DIR = "plots"
MAX_LOGGED_ERRORS = 20
TIMING_KEYS = ("read", "detection", "peaks", "tracking")


def _gt_interval(query: VQQuery) -> tuple[int, int] | None:
    track = query.response_track
    return (track[0].frame_number, track[-1].frame_number) if track else None


def diagnostics(queries: Sequence[VQQuery], outcomes: Mapping[str, QueryOutcome],
                results: Mapping | None = None) -> list[dict]:
    """One record per query for per_query.json (results: QueryKey -> QueryResult, or None)."""
    rows = []
    for q in queries:
        o = outcomes[q.name]
        row = {k: v for k, v in o.to_dict().items() if k != "track"}
        frames = [r[0] for r in o.track]
        row["track_interval"] = [min(frames), max(frames)] if frames else None
        row["track_length"] = len(frames)
        row["gt_interval"] = list(_gt_interval(q)) if q.response_track else None
        r: QueryResult | None = results.get(q.key) if results is not None else None
        if r is not None:
            row.update(tiou=r.tiou, stiou=r.stiou, recovered_frames=r.recovered_frames, gt_frames=r.gt_frames)
        row["error"] = o.error
        rows.append(row)
    return rows


def _search_efficiency(queries: Sequence[VQQuery], outcomes: Mapping[str, QueryOutcome]) -> float:
    """Failed queries count as having looked at every frame before their query frame."""
    keys = [q.key for q in queries if q.query_frame > 0]
    query_frames = {q.key: q.query_frame for q in queries}
    accessed = {q.key: outcomes[q.name].frames_accessed for q in queries if outcomes[q.name].error is None}
    return search_efficiency(query_frames, accessed, keys)


def timing_totals(outcomes: Mapping[str, QueryOutcome]) -> dict[str, float]:
    """Seconds summed over queries per step (``read, detection, peaks, tracking``)."""
    return {k: round(sum(float(o.timings.get(k, 0.0)) for o in outcomes.values()), 3) for k in TIMING_KEYS}


def _timing_columns(queries: Sequence[VQQuery], outcomes: Mapping[str, QueryOutcome]) -> dict:
    return {q.key: {f"{k}_s": f"{float(outcomes[q.name].timings.get(k, 0.0)):.4f}" for k in TIMING_KEYS}
            for q in queries}


def skipped_queries(annotations: VQAnnotationFile, raw: Mapping) -> dict[str, str]:
    """Query name -> why the annotation loader skipped it, for the query sets marked valid in
    the file that the loader rejected (malformed; never answered)."""
    answered = {q.key for q in annotations.queries()}
    names = [query_name(k) for k, _ in valid_query_sets(raw) if k not in answered]
    return dict(zip(names, (str(p) for p in annotations.problems)))


def _only_clips(raw: Mapping, clip_uids: set) -> dict:
    """The decoded annotation file ``raw`` with only the clips in ``clip_uids``."""
    videos = [{**v, "clips": [c for c in v.get("clips") or [] if c.get("clip_uid") in clip_uids]}
              for v in raw.get("videos") or []]
    return {**raw, "videos": [v for v in videos if v["clips"]]}


def write_reports(settings: Mapping, annotations: VQAnnotationFile, outcomes: Mapping[str, QueryOutcome]) -> dict:
    """Write the predictions (or submission), score it, write diagnostics and plots; return
    the metrics (annotated split) or {search_efficiency, num_queries} (test split). Both
    hold ``timings_s`` (seconds per step over all queries) and, when the annotation
    loader skipped malformed query sets, ``num_skipped`` / ``skipped_queries`` (never
    answered; scored as empty tracks when the official rules still score them)."""
    out = Path(settings["output_dir"])
    queries = annotations.queries()
    raw = read_json(settings["annotations"])
    if settings.get("max_clips") is not None:  # score the evaluated clips only
        raw = _only_clips(raw, {c.clip_uid for v in annotations.videos for c in v.clips})
    failed = [q for q in queries if outcomes[q.name].error is not None]
    if failed:
        logger.warning("%d of %d queries failed and are scored as empty tracks:", len(failed), len(queries))
        for q in failed[:MAX_LOGGED_ERRORS]:
            logger.warning("  %s: %s", q.name, outcomes[q.name].error)
    sub = build_submission(annotations, {q.key: outcomes[q.name].predicted_track() for q in queries})
    efficiency = _search_efficiency(queries, outcomes)
    scores: Scores | None = None
    if any(q.response_track is None for q in queries):  # test_unannotated: a submission to send
        path = out / SUBMISSION_FILE
        write_submission(path, sub)
        problems = validate_submission(read_json(path), annotations, raw)
        if problems:
            raise DataError(f"{path}: the written submission does not validate: {problems[:5]}")
        logger.info("wrote %s (%d queries; validated)", path, len(queries))
        metrics = {"search_efficiency": efficiency, "num_queries": len(queries)}
    else:
        path = out / PREDICTIONS_FILE
        write_submission(path, sub)
        scores = score_submission(read_json(path), annotations, raw)
        write_scores(out, scores, str(path), extra=_timing_columns(queries, outcomes))
        metrics = {k: scores.metrics[k] for k in METRIC_KEYS}
        metrics.update(search_efficiency=efficiency)
        metrics.update({k: v for k, v in scores.metrics.items() if k not in METRIC_KEYS})
    skipped = skipped_queries(annotations, raw)
    if skipped:
        metrics["num_skipped"] = len(skipped)
        metrics["skipped_queries"] = skipped
    metrics["timings_s"] = timing_totals(outcomes)
    metrics.update(failure_fields((q.name, outcomes[q.name].error) for q in failed))  # exit status 3 when any
    atomic_write_json(out / METRICS_FILE, metrics, indent=2)
    results = scores.results if scores is not None else None
    atomic_write_json(out / DIAGNOSTICS_FILE, diagnostics(queries, outcomes, results), indent=1)
    plots = settings.get("plots") or {}
    if plots.get("enabled", True):
        try:
            write_plots(settings, queries, outcomes)
            if scores is not None:
                write_track_videos(settings, queries, outcomes, scores)
        except Exception:  # noqa: BLE001 - a figure must never cost the evaluation
            logger.exception("plotting failed")
    logger.info("wrote %s, %s and %s in %s", path.name, METRICS_FILE, DIAGNOSTICS_FILE, out)
    return metrics


def pick_best_and_worst(results: Mapping, num_best: int, num_worst: int) -> tuple[list, list]:
    """The keys of the ``num_best`` highest-stIoU results and the ``num_worst`` lowest
    (among equal stIoU the higher-scored first: confident mistakes), never one twice."""
    def score_of(r: QueryResult) -> float:
        return float(r.score) if r.score == r.score else float("-inf")  # NaN last

    keys = list(results)
    best = sorted(keys, key=lambda k: (-results[k].stiou, -score_of(results[k])))[:max(num_best, 0)]
    rest = [k for k in keys if k not in best]
    worst = sorted(rest, key=lambda k: (results[k].stiou, -score_of(results[k])))[:max(num_worst, 0)]
    return best, worst


def write_track_videos(settings: Mapping, queries: Sequence[VQQuery], outcomes: Mapping[str, QueryOutcome],
                       scores: Scores) -> list[Path]:
    """``plots/tracks/{best,worst}_<rank>_<query>.gif``: the predicted track beside the GT
    for the best and worst queries by stIoU (``plots.track_videos``: enabled, num_best,
    num_worst, max_frames, height). Returns the files written."""
    cfg = dict((settings.get("plots") or {}).get("track_videos") or {})
    if not cfg.get("enabled", True):
        return []
    best, worst = pick_best_and_worst(scores.results, int(cfg.get("num_best", 3)), int(cfg.get("num_worst", 3)))
    by_key = {q.key: q for q in queries}
    by_clip = queries_by_clip(queries)
    out = Path(settings["output_dir"]) / PLOTS_DIR / "tracks"
    written = []
    for tag, keys in (("best", best), ("worst", worst)):
        for rank, key in enumerate(keys, 1):
            q = by_key.get(key)
            if q is None:  # scored from the raw file only: never answered, no frames to show
                continue
            o, r = outcomes[q.name], scores.results[key]
            path = out / f"{tag}_{rank}_{q.name}.gif"
            try:
                with clip_frames(settings, q.clip_uid, by_clip[q.clip_uid]) as frames:
                    write_track_gif(path, frames, gt=scores.gt.tracks[key], pred=o.track,
                                    max_frames=int(cfg.get("max_frames", 40)), height=int(cfg.get("height", 180)),
                                    title=f"{q.name} stIoU {r.stiou:.2f} score {o.score:.2f}")
                written.append(path)
            except DataError as e:
                logger.warning("track video of %s skipped: %s", q.name, e)
    return written


# Plots ----------------------------------------------------------------------------------------
def _load_detections(out: Path, query: VQQuery) -> QueryDetections | None:
    path = detection_path(out / DETECTIONS_DIR, query)
    return QueryDetections.load(path)[0] if path.is_file() else None


def write_plots(settings: Mapping, queries: Sequence[VQQuery], outcomes: Mapping[str, QueryOutcome]) -> None:
    """``plots/curves/<query>.png`` for the first ``plots.num_curves`` queries with detections;
    ``plots/false_positives.png`` on annotated splits."""
    out = Path(settings["output_dir"])
    cfg = settings.get("plots") or {}
    peaks = PeakParams.from_config(settings["peaks"])
    drawn = 0
    for q in queries:
        if drawn >= int(cfg.get("num_curves", 10)):
            break
        dets = _load_detections(out, q)
        if dets is None:
            continue
        o = outcomes[q.name]
        curves = curve_arrays(dets, peaks)
        frames = [r[0] for r in o.track]
        plot_score_curve(out / PLOTS_DIR / "curves" / f"{q.name}.png", raw=curves["raw"], smoothed=curves["smoothed"],
                         peaks=curves["peaks"], chosen=None if o.fallback and peaks.fallback == "last_frame" else o.peak_frame,
                         track_interval=(min(frames), max(frames)) if frames else None,
                         gt_interval=_gt_interval(q), query_frame=q.query_frame,
                         title=f"{q.name} ({q.object_title})  score {o.score:.3f}")
        drawn += 1
    if all(q.response_track for q in queries):
        write_false_positive_gallery(settings, queries, num=int(cfg.get("num_false_positives", 16)),
                                     max_per_query=int(cfg.get("false_positives_per_query", 2)))


def write_false_positive_gallery(settings: Mapping, queries: Sequence[VQQuery], num: int = 16,
                                 max_per_query: int = 2, size: int = 128) -> None:
    """``plots/false_positives.png``: the top-scoring detections outside the response tracks."""
    out = Path(settings["output_dir"])
    candidates = []
    for q in queries:
        dets = _load_detections(out, q)
        if dets is not None and dets.num_frames:
            candidates.append((q.name, q.clip_uid, dets.boxes[:, 0], dets.score_curve(), _gt_interval(q)))
    fps = top_false_positives(candidates, num=num, max_per_query=max_per_query)
    by_name = {q.name: q for q in queries}
    by_clip = queries_by_clip(queries)
    items = {}
    for clip_uid in dict.fromkeys(fp.clip_uid for fp in fps):
        mine = [fp for fp in fps if fp.clip_uid == clip_uid]
        needed = {fp.frame for fp in mine} | {by_name[fp.query].visual_crop.frame_number for fp in mine}
        try:
            with clip_frames(settings, clip_uid, by_clip[clip_uid]) as frames:
                images = frames.read(sorted(needed))
            for fp in mine:
                q = by_name[fp.query]
                crop = make_visual_crop(images[q.visual_crop.frame_number], q.visual_crop.xyxy, size=size)
                region = make_visual_crop(images[fp.frame], fp.box, size=size)
                items[fp] = (crop, region, f"{q.clip_uid[:8]}_{q.annotation_index}_{q.query_set} "
                                           f"f{fp.frame} s={fp.score:.2f}")
        except DataError as e:
            logger.warning("false-positive gallery: clip %s skipped: %s", clip_uid, e)
    plot_false_positive_gallery(out / PLOTS_DIR / "false_positives.png", [items[fp] for fp in fps if fp in items])
