"""ClipReader frame mapping on clips whose frames show their own number as a binary code.

Canonical frame k of a 30 fps clip shows k as 8 black/white blocks (robust to H.264 loss);
5 fps clip frame i must show 6 * i, whatever the clip's rate, time-stamp offset, the order
and repeats of the requested indices, and the seeks taken.
"""
from fractions import Fraction

import av
import numpy as np
import pytest

from episodic.errors import DataError
from vq2d.data.frames import ClipReader

W, H = 96, 64  # 4 x 2 blocks of 24 x 32 pixels, one bit each
NUM_CANONICAL = 60  # 2 s at 30 fps -> 10 clip frames


def stamp(k: int) -> np.ndarray:
    image = np.zeros((H, W, 3), np.uint8)
    for bit in range(8):
        row, col = divmod(bit, 4)
        if (k >> bit) & 1:
            image[row * 32:(row + 1) * 32, col * 24:(col + 1) * 24] = 255
    return image


def read_stamp(image: np.ndarray) -> int:
    """The number shown by ``image`` (any size: blocks are located relative to it)."""
    h, w = image.shape[:2]
    k = 0
    for bit in range(8):
        row, col = divmod(bit, 4)
        block = image[row * h // 2:(row + 1) * h // 2, col * w // 4:(col + 1) * w // 4]
        assert block.mean() < 60 or block.mean() > 195, "block neither black nor white"
        k |= int(block.mean() > 127) << bit
    return k


def write_clip(path, numbers, fps, first_pts=0, faststart=False):
    """H.264 mp4 whose n-th frame shows ``numbers[n]``; keyframe every 12 frames."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=fps, options={"g": "12", "crf": "18"})
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for n, k in enumerate(numbers):
            frame = av.VideoFrame.from_ndarray(stamp(k), format="rgb24")
            frame.pts, frame.time_base = first_pts + n, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    return {
        "30fps": write_clip(root / "c30.mp4", range(NUM_CANONICAL), 30),
        "5fps": write_clip(root / "c5.mp4", range(0, NUM_CANONICAL, 6), 5),
        "30fps_offset": write_clip(root / "c30_offset.mp4", range(NUM_CANONICAL), 30, first_pts=7),
        "30fps_faststart": write_clip(root / "c30_fs.mp4", range(NUM_CANONICAL), 30, faststart=True),
    }


def test_stamps_survive_encoding(clips):
    with av.open(str(clips["30fps"])) as container:
        shown = [read_stamp(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    assert shown == list(range(NUM_CANONICAL))


@pytest.mark.parametrize("name", ["30fps", "5fps", "30fps_offset", "30fps_faststart"])
def test_clip_frame_i_is_canonical_frame_6i(clips, name):
    indices = [7, 0, 3, 9, 3, 1, 7, 8, 2, 6, 5, 4, 0]  # random order with repeats
    with ClipReader(clips[name]) as reader:
        assert reader.num_frames == 10
        frames = reader.read(indices)
        assert sorted(frames) == list(range(10))
        assert {i: read_stamp(f) for i, f in frames.items()} == {i: 6 * i for i in range(10)}
        assert all(f.shape == (H, W, 3) and f.dtype == np.uint8 for f in frames.values())
        # the same reader serves a second, backward request (seeks again)
        assert {i: read_stamp(f) for i, f in reader.read([9, 2]).items()} == {9: 54, 2: 12}


def test_iter_frames_streams_sorted_and_seeks_across_gaps(clips):
    with ClipReader(clips["30fps"], seek_gap_s=0.3) as reader:  # gaps > 0.3 s are sought over
        out = [(i, read_stamp(f)) for i, f in reader.iter_frames([9, 0, 5, 6, 0])]
    assert out == [(0, 0), (5, 30), (6, 36), (9, 54)]


def test_resize_to_original_size(clips):
    with ClipReader(clips["30fps"], original_size=(192, 128)) as reader:
        frames = reader.read([3, 8])
    assert frames[3].shape == (128, 192, 3)
    assert read_stamp(frames[3]) == 18 and read_stamp(frames[8]) == 48
    with ClipReader(clips["5fps"], original_size=(W, H)) as reader:  # same size: untouched
        assert reader.read([1])[1].shape == (H, W, 3)


def test_frames_past_the_end(clips):
    with ClipReader(clips["30fps"]) as reader:
        with pytest.raises(DataError) as err:
            reader.read([2, 10, 12])
        with pytest.raises(DataError, match="negative"):
            reader.read([-1])
    message = str(err.value)
    assert "c30.mp4" in message and "[10, 12]" in message and "10 frames" in message


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nowhere.mp4.*not found"):
        ClipReader(tmp_path / "nowhere.mp4")


def test_not_a_video(tmp_path):
    path = tmp_path / "junk.mp4"
    path.write_bytes(b"this is not an mp4 file" * 50)
    with pytest.raises(DataError, match="junk.mp4"):
        ClipReader(path).read([0])


def test_truncated_half(clips, tmp_path):
    data = clips["30fps"].read_bytes()
    path = tmp_path / "half.mp4"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="half.mp4"):
        with ClipReader(path) as reader:
            reader.read(range(10))


def test_truncated_with_header_first_never_gives_a_wrong_frame(clips, tmp_path):
    """The header (moov first) promises 60 frames; the cut data holds fewer. Every frame
    yielded must be right, and the reader must raise rather than stop silently."""
    data = clips["30fps_faststart"].read_bytes()
    path = tmp_path / "cut.mp4"
    raised = partial = 0
    for fraction in (0.5, 0.6, 0.7, 0.8, 0.9):
        path.write_bytes(data[: int(len(data) * fraction)])
        got = {}
        try:
            with ClipReader(path) as reader:
                for i, frame in reader.iter_frames(range(reader.num_frames)):
                    got[i] = read_stamp(frame)
        except DataError as e:
            raised += 1
            partial += bool(got)
            assert "cut.mp4" in str(e) and "truncated" in str(e)
            assert len(got) < 10
        else:
            assert len(got) == 10
        assert got == {i: 6 * i for i in got}
    assert raised >= 3 and partial >= 2  # frames before the cut still come out, then an error
