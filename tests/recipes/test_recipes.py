"""The recipe machinery on its own: the step runner (logs, reuse, stale inputs, failures),
the few-shot split, the background peak score, seed averaging, findings and reports."""
import json
import sys

import numpy as np
import pytest

from recipes.fewshot import subsample_nlq_train, write_fewshot_annotations
from recipes.report import bar_chart, format_table, write_readme
from recipes.reproduce import findings, mean_over_seeds, model_rows, seed_spread
from recipes.steps import StepFailed, StepRunner

TOOL = """import pathlib, sys
args = dict(a.split("=", 1) for a in sys.argv[1:])
print("running with", args)
if args.get("fail") == "1":
    sys.exit(3)
out = pathlib.Path(args["out"])
out.parent.mkdir(parents=True, exist_ok=True)
with open(out, "a") as f:
    f.write(args.get("text", "x") + "\\n")
"""


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "write.py").write_text(TOOL)
    return tmp_path


def _runner(workdir, lines, resume=True):
    class Stream:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    return StepRunner(workdir / "out", resume=resume, python=sys.executable, cwd=workdir, stream=Stream())


def test_step_runner_logs_reuses_and_reruns_stale_steps(workdir):
    out, lines = workdir / "out", []
    runner = _runner(workdir, lines)
    first = runner.tool("make", "write.py", [f"out={out}/a.txt"], outputs=[out / "a.txt"])
    runner.tool("use", "write.py", [f"out={out}/use/b.txt"], outputs=[out / "use" / "b.txt"], depends=["make"],
                clean=out / "use")
    assert not first.skipped and (out / "a.txt").read_text() == "x\n"
    assert "running with" in (out / "logs" / "make.log").read_text()
    assert any("ok" in line for line in lines)

    again = _runner(workdir, [])  # same commands: both reused, nothing written again
    assert again.tool("make", "write.py", [f"out={out}/a.txt"], outputs=[out / "a.txt"]).skipped
    assert again.tool("use", "write.py", [f"out={out}/use/b.txt"], outputs=[out / "use" / "b.txt"],
                      depends=["make"], clean=out / "use").skipped
    assert (out / "a.txt").read_text() == "x\n" and (out / "use" / "b.txt").read_text() == "x\n"

    changed = _runner(workdir, [])  # upstream command changed: it runs, the dependent runs from scratch
    assert not changed.tool("make", "write.py", [f"out={out}/a.txt", "text=y"], outputs=[out / "a.txt"]).skipped
    assert not changed.tool("use", "write.py", [f"out={out}/use/b.txt"], outputs=[out / "use" / "b.txt"],
                            depends=["make"], clean=out / "use").skipped
    assert (out / "use" / "b.txt").read_text() == "x\n"  # cleaned first, not appended to
    assert [t["skipped"] for t in changed.timings()] == [False, False]


def test_step_runner_runs_two_chains_side_by_side(workdir):
    from concurrent.futures import ThreadPoolExecutor

    out, lines = workdir / "out", []
    runner = _runner(workdir, lines)
    slow = "import time; time.sleep(0.3)\n" + TOOL
    (workdir / "tools" / "slow.py").write_text(slow)

    def chain(tag, script):
        for i in range(2):
            runner.tool(f"{tag}{i}", script, [f"out={out}/{tag}{i}.txt"], outputs=[out / f"{tag}{i}.txt"],
                        depends=[f"{tag}{i - 1}"] if i else [])

    with ThreadPoolExecutor(max_workers=1) as pool:
        other = pool.submit(chain, "b", "slow.py")
        chain("a", "write.py")
        other.result()
    text = "".join(lines)
    assert sorted(r.name for r in runner.results) == ["a0", "a1", "b0", "b1"]
    numbers = [line.split("]")[0] for line in text.splitlines() if line.startswith("[")]
    assert sorted(numbers) == ["[ 1", "[ 2", "[ 3", "[ 4"]  # unique step numbers
    for name in ("a0", "a1", "b0", "b1"):  # every step's "ok" is on its own line or after its own name
        assert sum(1 for line in text.splitlines() if name in line and "ok" in line) == 1, text
    assert all((out / f"{n}.txt").read_text() == "x\n" for n in ("a0", "a1", "b0", "b1"))


def test_run_together_keeps_the_order_runs_at_once_and_waits_before_raising():
    import threading
    import time

    from recipes.recipe import run_together

    started, ended = [], []

    def chain(tag, wait=0.0, fail=False):
        def run():
            started.append((tag, threading.current_thread().name))
            time.sleep(wait)
            ended.append(tag)
            if fail:
                raise RuntimeError(f"{tag} failed")
            return tag
        return run

    t0 = time.perf_counter()
    assert run_together([chain("a", 0.3), chain("b", 0.3), chain("c", 0.3)], parallel=True) == ["a", "b", "c"]
    assert time.perf_counter() - t0 < 0.8  # three 0.3 s chains at once, not 0.9 s
    assert len({name for _, name in started}) == 3
    started.clear()
    assert run_together([chain("a"), chain("b")], parallel=False) == ["a", "b"]
    assert len({name for _, name in started}) == 1  # one after the other, here
    ended.clear()
    with pytest.raises(RuntimeError, match="a failed"):
        run_together([chain("a", fail=True), chain("b", 0.3)], parallel=True)
    assert ended == ["a", "b"]  # the failure surfaced only after the other chain ended
    with pytest.raises(RuntimeError, match="b failed"):
        run_together([chain("a"), chain("b", fail=True)], parallel=True)


def test_step_runner_reruns_when_an_output_was_replaced_and_says_why(workdir):
    out, lines = workdir / "out", []
    make = dict(outputs=[out / "data"])
    use = dict(outputs=[out / "use" / "b.txt"], depends=["make"], clean=out / "use")
    runner = _runner(workdir, [])
    runner.tool("make", "write.py", [f"out={out}/data/a.txt"], **make)
    runner.tool("use", "write.py", [f"out={out}/use/b.txt"], **use)
    (out / "data" / "a.txt").write_text("replaced by hand, same command line\n")
    again = _runner(workdir, lines)
    assert not again.tool("make", "write.py", [f"out={out}/data/a.txt"], **make).skipped
    assert not again.tool("use", "write.py", [f"out={out}/use/b.txt"], **use).skipped  # it read the old data
    assert any(f"make: {out / 'data'} changed since the step made it; running it again" in line for line in lines)
    assert any("use: make ran again since; running it again" in line for line in lines)
    assert _runner(workdir, []).tool("make", "write.py", [f"out={out}/data/a.txt"], **make).skipped


def test_step_runner_failure_names_step_and_log(workdir):
    runner = _runner(workdir, [])
    with pytest.raises(StepFailed) as err:
        runner.tool("broken", "write.py", ["fail=1"])
    message = str(err.value)
    assert "broken" in message and "exit code 3" in message and "broken.log" in message
    assert "running with" in message  # the log's last lines
    assert not (workdir / "out" / "steps" / "broken.json").exists()  # not recorded as done


def test_step_runner_refuses_to_clean_outside_output_dir(workdir):
    runner = _runner(workdir, [], resume=False)
    with pytest.raises(ValueError, match="refusing"):
        runner.tool("x", "write.py", [f"out={workdir}/o.txt"], clean=workdir / "tools")
    assert (workdir / "tools" / "write.py").is_file()


def _nlq_train(num_clips=3, per_clip=4):
    videos = [{"video_uid": f"v{i}", "clips": [{"clip_uid": f"c{i}", "video_start_sec": 0.0, "video_end_sec": 60.0,
                                                 "annotations": [{"annotation_uid": f"a{i}", "language_queries": [
                                                     {"query": f"q{i}{j}?", "clip_start_sec": j, "clip_end_sec": j + 2}
                                                     for j in range(per_clip)] + [{"query": ""}]}]}]}
              for i in range(num_clips)]
    return {"version": "2.0", "videos": videos}


def test_fewshot_keeps_every_clip_and_a_fraction_of_queries(tmp_path):
    src = _nlq_train()
    by_clip, clip_counts = subsample_nlq_train(src, 0.34, seed=0)  # NaQ: whole clips (1 of 3)
    assert (clip_counts["unit"], clip_counts["clips"], clip_counts["kept"], clip_counts["kept_queries"]) == ("clip", 3, 1, 4)
    kept_by_clip = {c["clip_uid"]: len(c["annotations"][0]["language_queries"]) for v in by_clip["videos"] for c in v["clips"]}
    assert sorted(kept_by_clip.values()) == [0, 0, 4] and clip_counts["kept_clips"] == [k for k, n in kept_by_clip.items() if n]
    out, counts = subsample_nlq_train(src, 0.25, seed=0, unit="query")
    assert {k: counts[k] for k in ("queries", "kept", "fraction", "seed")} == {"queries": 12, "kept": 3, "fraction": 0.25, "seed": 0}
    kept = [q["query"] for v in out["videos"] for c in v["clips"] for a in c["annotations"]
            for q in a["language_queries"]]
    assert len(kept) == 3 and all(kept)  # text-less queries dropped
    assert [c["clip_uid"] for v in out["videos"] for c in v["clips"]] == ["c0", "c1", "c2"]
    assert subsample_nlq_train(src, 0.25, seed=0, unit="query")[0] == out  # deterministic
    assert len(src["videos"][0]["clips"][0]["annotations"][0]["language_queries"]) == 5  # input untouched
    assert subsample_nlq_train(src, 0.01, seed=0, unit="query")[1]["kept"] == 1
    with pytest.raises(ValueError):
        subsample_nlq_train(src, 0.0, seed=0)

    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "nlq_train.json").write_text(json.dumps(src))
    (ann / "vq_train.json").write_text("{}")
    write_fewshot_annotations(ann, tmp_path / "fs", 0.5, seed=1)
    assert (tmp_path / "fs" / "vq_train.json").resolve() == (ann / "vq_train.json").resolve()
    assert not (tmp_path / "fs" / "moments_train.json").exists()
    assert json.loads((tmp_path / "fs" / "fewshot.json").read_text())["kept_queries"] == 8  # 2 of 3 clips x 4
    assert len(json.loads((tmp_path / "fs" / "fewshot_clips.json").read_text())) == 2


def test_background_peak_score_uses_frames_outside_the_track(tmp_path):
    from vq2d.data.annotations import load_vq_annotations
    from vq2d.inference.detection_pass import QueryDetections
    from vq2d.inference.pipeline import detection_path

    from recipes.vq2d_runs import peak_scores

    box = {"x": 1, "y": 1, "width": 4, "height": 4, "rotation": 0, "original_width": 32, "original_height": 32}
    qs = {"is_valid": True, "query_frame": 6, "query_video_frame": 36, "object_title": "cup",
          "visual_crop": {**box, "frame_number": 7, "video_frame_number": 42},
          "response_track": [{**box, "frame_number": f, "video_frame_number": 6 * f} for f in (2, 3)]}
    ann = {"version": "1", "videos": [{"video_uid": "v", "clips": [{
        "clip_uid": "c", "video_start_sec": 0.0, "video_end_sec": 2.0, "video_start_frame": 0, "video_end_frame": 60,
        "clip_fps": 5.0, "annotations": [{"query_sets": {"1": qs}}]}]}]}
    path = tmp_path / "vq_val.json"
    path.write_text(json.dumps(ann))
    query = load_vq_annotations(path).queries()[0]
    dets = QueryDetections.empty(6, 2)
    for t, score in enumerate([0.1, 0.4, 0.9, 0.8, 0.2, 0.0]):
        dets.set_frame(t, np.zeros((1, 4), np.float32), np.array([score], np.float32))
    dets.save(detection_path(tmp_path / "eval" / "detections", query))
    scores = peak_scores(tmp_path / "eval", path)
    assert scores["bg_peak_score"] == pytest.approx(0.4) and scores["gt_peak_score"] == pytest.approx(0.9)
    assert scores["bg_queries"] == 1


def test_mean_over_seeds_and_findings():
    m = mean_over_seeds({0: {"a": 1.0, "b": None, "n": {"x": 1}}, 1: {"a": 3.0, "b": 2.0, "n": {"x": 1}}})
    assert m["a"] == 2.0 and m["b"] is None and m["n"] == {"x": 1}
    assert m["seeds"] == [0, 1] and m["per_seed"]["1"]["a"] == 3.0
    assert seed_spread(m, "a") == pytest.approx(1.0) and seed_spread(m, "b") is None

    vq = {"no_negatives": {"ap_pos": 10.0, "ap_posneg": 5.0, "bg_peak_score": 0.9},
          "negatives": {"ap_pos": 10.5, "ap_posneg": 8.0, "bg_peak_score": 0.95}}
    nlq = {"nlq_only": {"R@1_IoU0.3": 10.0}, "nlq_naq": {"R@1_IoU0.3": 12.0}, "naq_zero_shot": {"R@1_IoU0.3": 0.0},
           "fewshot_nlq_only": {"R@1_IoU0.3": 3.0}, "fewshot_nlq_naq": {"R@1_IoU0.3": 9.0}}
    found = {(f["metric"], f["from"]): f for f in findings({"vq2d": vq, "nlq": nlq})}
    assert found[("ap_posneg", "no_negatives")]["shows"] is True
    assert found[("bg_peak_score", "no_negatives")]["shows"] is False  # went up: reported, not hidden
    assert found[("ap_pos", "no_negatives")]["shows"] is True  # about the same (5%)
    small = {"no_negatives": {"ap_pos": 2.8}, "negatives": {"ap_pos": 2.2}}
    assert findings({"vq2d": small, "nlq": nlq})[2]["shows"] is False  # -21%: not "the same", though < 1 point
    assert found[("stAP@0.25", "no_negatives")]["shows"] is None  # not measured
    assert found[("R@1_IoU0.3 gain", "full")]["delta"] == pytest.approx(4.0)
    assert found[("R@1_IoU0.3", "-")]["shows"] is False  # zero-shot recall 0


def test_model_runs_rows_and_findings():
    vq = {"no_negatives": {"ap_pos": 10.0}, "negatives": {"ap_pos": 10.0}}
    nlq = {"nlq_only": {"R@1_IoU0.3": 10.0}, "nlq_naq": {"R@1_IoU0.3": 12.0}, "naq_zero_shot": {},
           "fewshot_nlq_only": {}, "fewshot_nlq_naq": {},
           "reler_nlq_only": {"R@1_IoU0.3": 8.0}, "reler_nlq_naq": {"R@1_IoU0.3": 7.0},
           "snag_nlq_only": {"R@1_IoU0.3": 20.0}, "snag_nlq_naq": {"R@1_IoU0.3": 25.0}}
    assert list(model_rows(nlq, "vslnet")) == ["VSLNet NLQ only", "VSLNet NLQ + NaQ", "ReLER NLQ only",
                                               "ReLER NLQ + NaQ", "SnAG NLQ only", "SnAG NLQ + NaQ"]
    found = {(f["claim"], f["metric"]): f for f in findings({"vq2d": vq, "nlq": nlq})}
    assert found[("ReLER: NLQ + NaQ beats NLQ only", "R@1_IoU0.3")]["shows"] is False  # reported as it came out
    assert found[("SnAG: NLQ + NaQ beats NLQ only", "R@1_IoU0.3")]["delta"] == pytest.approx(5.0)
    assert found[("SnAG + NaQ beats VSLNet + NaQ", "R@1_IoU0.3")]["delta"] == pytest.approx(13.0)
    assert found[("SnAG + NaQ beats ReLER + NaQ", "R@1_IoU0.3")]["shows"] is True
    assert not any("SnAG" in claim for claim, _ in
                   {(f["claim"], f["metric"]) for f in findings({"vq2d": vq, "nlq": dict(list(nlq.items())[:5])})})


def test_nlq_settings_per_model():
    from omegaconf import OmegaConf

    from recipes.nlq_runs import NLQSettings

    cfg = OmegaConf.create({"model": "vslnet", "preset": "tiny", "epochs": {"nlq_only": 40, "joint": 4},
                            "train_args": ["num_workers=0"], "threads": 1,
                            "per_model": {"snag": {"train_args": ["model.num_levels=5"], "epochs": {"joint": 2}}}})
    snag = NLQSettings.for_model(cfg, "snag")
    assert snag.model == "snag" and snag.epochs == {"nlq_only": 40, "joint": 2}
    assert snag.train_args == ("num_workers=0", "model.num_levels=5") and snag.env == {"OMP_NUM_THREADS": "1"}
    assert NLQSettings.for_model(cfg, "reler").train_args == ("num_workers=0",)


def test_report_table_chart_and_readme(tmp_path):
    table = format_table({"run a": {"x": 0.5, "y": 12.345}, "b": {"x": None}}, ["x", "y"])
    assert table.splitlines()[2].split() == ["run", "a", "0.500", "12.35"] and "-" in table.splitlines()[3]
    png = bar_chart(tmp_path / "p" / "c.png", [("panel", {"a": {"x": 1.0}, "b": {"x": 2.0}}, ["x"], "%")], "t")
    assert png.read_bytes()[:4] == b"\x89PNG"
    readme = write_readme(tmp_path / "README.md", title="T", summary=["s"], tables=table,
                          pictures=[("cap", "p/c.png")], timings=[{"name": "st", "seconds": 1.0, "skipped": True}])
    text = readme.read_text()
    assert "![cap](p/c.png)" in text and "run a" in text and "st" in text


def test_choose_curves_prefers_best_and_worst_over_runs(tmp_path):
    from recipes.vq2d_runs import choose_curves, pick_pictures

    stious = {"a": {"q1": 0.0, "q2": 0.0, "q3": 0.0}, "b": {"q1": 0.1, "q2": 0.7, "q3": 0.0}}
    for run, rows in stious.items():
        (tmp_path / run / "plots" / "curves").mkdir(parents=True)
        for name in ["q1", "q2", "q3"] if run == "a" else ["q1", "q2"]:
            (tmp_path / run / "plots" / "curves" / f"{name}.png").write_bytes(b"png")
        (tmp_path / run / "per_query.json").write_text(json.dumps([{"name": n, "stiou": v} for n, v in rows.items()]))
    assert choose_curves([tmp_path / "a", tmp_path / "b"], 3) == ["q2", "q1"]  # q3 not drawn in b
    assert choose_curves([tmp_path / "a"], 1) == ["q1"]
    copied = pick_pictures(tmp_path / "b", tmp_path / "pics", "vq2d_b", ["q2"])
    assert [what for what, _ in copied] == ["q2"] and (tmp_path / "pics" / "vq2d_b_curve_q2.png").is_file()


def test_step_runner_reruns_from_scratch_when_watched_config_changes(workdir):
    out = workdir / "out"
    (workdir / "configs").mkdir()
    (workdir / "configs" / "tool.yaml").write_text("a: 1\n")
    args = dict(outputs=[out / "run" / "c.txt"], clean=out / "run", watch=["configs"])
    assert not _runner(workdir, []).tool("cfg", "write.py", [f"out={out}/run/c.txt"], **args).skipped
    assert _runner(workdir, []).tool("cfg", "write.py", [f"out={out}/run/c.txt"], **args).skipped
    (workdir / "configs" / "tool.yaml").write_text("a: 2\n")
    assert not _runner(workdir, []).tool("cfg", "write.py", [f"out={out}/run/c.txt"], **args).skipped
    assert (out / "run" / "c.txt").read_text() == "x\n"  # cleaned, not resumed


def test_vq2d_steps_watch_the_configs_their_tool_reads():
    """A new inference default (configs/vq2d/eval.yaml) must not re-train detectors, and every
    config group a tool composes must be watched."""
    from pathlib import Path

    import yaml

    from recipes.vq2d_runs import EVAL_CONFIGS, MATCH_CONFIGS, TRAIN_CONFIGS

    repo = Path(__file__).resolve().parents[2]
    for watched in (TRAIN_CONFIGS, EVAL_CONFIGS, MATCH_CONFIGS):
        assert all((repo / p).exists() for p in watched), watched

    def groups(path):  # the config groups a file's defaults list composes (hydra's own excluded)
        out = set()
        for entry in yaml.safe_load(path.read_text()).get("defaults", []):
            if isinstance(entry, dict):
                name = next(iter(entry)).replace("override ", "").lstrip("/")
                if not name.startswith("hydra"):
                    out.add(name)
        return out

    vq2d = repo / "configs" / "vq2d"
    train_groups = groups(vq2d / "train.yaml") | {g for f in (vq2d / "preset").glob("*.yaml") for g in groups(f)}
    assert {f"configs/vq2d/{g}" for g in train_groups} <= set(TRAIN_CONFIGS)
    assert {f"configs/vq2d/{g}" for g in groups(vq2d / "eval.yaml")} <= set(EVAL_CONFIGS)
    assert "configs/vq2d/eval.yaml" not in TRAIN_CONFIGS and "configs/vq2d/train.yaml" not in EVAL_CONFIGS


def test_data_step_watches_the_generators_code():
    """The synthetic data set is a function of the seed, the knobs and the generators' code:
    every project module the generators import (shared I/O and package markers aside) is
    watched, so a generator change re-makes the data instead of leaving it stale."""
    import subprocess
    import sys
    from pathlib import Path

    from recipes.data import GENERATOR_SOURCES

    repo = Path(__file__).resolve().parents[2]
    assert all((repo / p).exists() for p in GENERATOR_SOURCES), GENERATOR_SOURCES
    code = ("import sys; from pathlib import Path; before = set(sys.modules);"
            "import recipes.synthetic, nlq.data.synthetic, vq2d.data.synthetic;"
            "print('\\n'.join(str(Path(m.__file__).resolve()) for n, m in list(sys.modules.items())"
            " if n not in before and getattr(m, '__file__', None)))")
    files = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True,
                           check=True).stdout.split()
    ours = [Path(f).relative_to(repo) for f in files
            if Path(f).is_file() and Path(f).is_relative_to(repo) and not Path(f).relative_to(repo).parts[0].startswith(".")]
    generator = [p for p in ours if p.parts[0] != "episodic" and p.name != "__init__.py" or "synthetic" in p.parts]
    assert any(p.parts[:3] == ("vq2d", "data", "synthetic") for p in generator)
    watched = [repo / p for p in GENERATOR_SOURCES]
    unwatched = [str(p) for p in generator if not any((repo / p) == w or w in (repo / p).parents for w in watched)]
    assert not unwatched, unwatched


def test_config_digest_ignores_byte_code(tmp_path):
    from recipes.steps import config_digest

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "gen.py").write_text("X = 1\n")
    before = config_digest([tmp_path / "pkg"])
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "gen.cpython-312.pyc").write_bytes(b"\x00stale")
    assert config_digest([tmp_path / "pkg"]) == before
    (tmp_path / "pkg" / "gen.py").write_text("X = 2\n")
    assert config_digest([tmp_path / "pkg"]) != before
