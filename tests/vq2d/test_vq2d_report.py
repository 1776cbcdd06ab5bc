"""What users look at: per-query timings, the best / worst picks and their track GIFs."""
import numpy as np
import pytest
from PIL import Image

from vq2d.evaluation.box_checks import outside_frame
from vq2d.evaluation.breakdown import length_group, size_group
from vq2d.evaluation.metrics import QueryResult
from vq2d.inference.pipeline import TimedFrames, _pass_shares
from vq2d.inference.plots import gif_frame_numbers, write_track_gif
from vq2d.inference.report import pick_best_and_worst


class FakeFrames:
    num_frames = 30

    def iter_frames(self, indices):
        return ((i, np.full((48, 64, 3), i, dtype=np.uint8)) for i in sorted(set(indices)))

    def read(self, indices):
        return dict(self.iter_frames(indices))


def _result(stiou, score):
    return QueryResult(tiou=stiou, stiou=stiou, recovered_frames=0, gt_frames=1, score=score, empty=False)


def test_best_and_worst_never_overlap_and_prefer_confident_mistakes():
    results = {"a": _result(0.9, 0.1), "b": _result(0.0, 0.2), "c": _result(0.0, 0.9), "d": _result(0.5, 0.5),
               "e": _result(0.0, float("nan"))}
    best, worst = pick_best_and_worst(results, 2, 2)
    assert best == ["a", "d"] and worst == ["c", "b"]
    best, worst = pick_best_and_worst(results, 4, 4)
    assert not set(best) & set(worst) and len(best) + len(worst) == 5


def test_gif_frames_span_both_tracks_thinned_and_clipped():
    assert gif_frame_numbers([5, 6, 7], [9, 10], 40) == [5, 6, 7, 8, 9, 10]
    assert gif_frame_numbers([-3, -2], [0, 1], 40, num_frames=30) == [0, 1]
    thinned = gif_frame_numbers(list(range(100)), [], 10)
    assert len(thinned) == 10 and thinned[0] == 0 and thinned[-1] == 99
    assert gif_frame_numbers([], [], 10) == []


def test_track_gif_shows_gt_beside_prediction(tmp_path):
    gt = np.array([[f, 5, 5, 30, 30] for f in range(3, 8)], dtype=float)
    pred = [[f, 8.0, 6.0, 33.0, 31.0] for f in range(5, 10)]
    write_track_gif(tmp_path / "t.gif", FakeFrames(), gt=gt, pred=pred, height=48, title="q")
    gif = Image.open(tmp_path / "t.gif")
    assert gif.n_frames == 7 and gif.size == (64 * 2 + 4, 48 + 14)


def test_timed_frames_counts_reading_time_and_passes_everything_else_through():
    timed = TimedFrames(FakeFrames())
    assert timed.num_frames == 30 and sorted(timed.read([2, 1])) == [1, 2]
    assert [i for i, _ in timed.iter_ordered([4, 3], chunk_size=1)] == [4, 3]
    assert timed.seconds > 0


def test_pass_shares_split_a_clip_pass_by_frames_searched():
    class Q:
        def __init__(self, name, query_frame):
            self.name, self.query_frame = name, query_frame
    shares = _pass_shares([Q("a", 10), Q("b", 30)], read_s=2.0, total_s=6.0)
    assert shares["a"] == pytest.approx({"read": 0.5, "detection": 1.0})
    assert shares["b"] == pytest.approx({"read": 1.5, "detection": 3.0})


def test_size_and_length_groups_use_the_official_area_ranges():
    assert [size_group(a) for a in (0.0, 32 ** 2 - 1, 32 ** 2, 96 ** 2 - 1, 96 ** 2, 1e12)] == \
        ["small", "small", "medium", "medium", "large", "large"]
    assert [length_group(n) for n in (1, 8, 9, 24, 25, 300)] == ["1-8", "1-8", "9-24", "9-24", "25+", "25+"]


def test_outside_frame_flags_only_far_or_disjoint_boxes():
    boxes = np.array([[-10, -10, 50, 50],      # leaves the frame a little: fine
                      [700, 10, 800, 60],      # entirely right of a 640-wide frame
                      [-400, 10, 20, 60],      # a corner more than half a frame beyond the edge
                      [50, 50, 10, 10]])       # flipped but inside: fine
    assert outside_frame(boxes, 640, 480).tolist() == [False, True, True, False]
