"""setup_logging (rank-aware, file on rank 0), TensorboardLogger round trip, progress bars."""
import io
import logging

import matplotlib
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from episodic.logging import TensorboardLogger, progress, setup_logging

matplotlib.use("Agg")


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


def test_rank0_logs_to_stdout_and_file_once(tmp_path, capsys, restore_root_logger):
    hydra_like = logging.StreamHandler(__import__("sys").stdout)
    logging.getLogger().addHandler(hydra_like)
    setup_logging(tmp_path, rank=0)
    setup_logging(tmp_path, rank=0)  # calling twice does not duplicate lines
    logging.getLogger("vq2d.train").info("iteration 10 loss 0.5")
    out = capsys.readouterr().out
    assert out.count("iteration 10 loss 0.5") == 1 and "vq2d.train" in out
    assert hydra_like not in logging.getLogger().handlers
    text = (tmp_path / "log.txt").read_text()
    assert text.count("iteration 10 loss 0.5") == 1


def test_other_ranks_print_only_warnings_and_write_no_file(tmp_path, capsys, restore_root_logger):
    setup_logging(tmp_path / "r1", rank=1)
    log = logging.getLogger("nlq.train")
    log.info("quiet info")
    log.warning("loud warning")
    out = capsys.readouterr().out
    assert "quiet info" not in out and "loud warning" in out and "rank1" in out
    assert not (tmp_path / "r1" / "log.txt").exists()


def test_tensorboard_scalars_read_back(tmp_path):
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    with TensorboardLogger(tmp_path, enabled=True) as tb:
        tb.scalar("loss/total", torch.tensor(0.75), step=1)
        tb.scalars({"loss/total": np.float32(0.5), "lr": 0.02}, step=2)
        fig = plt.figure()
        tb.figure("curves/score", fig, step=2)
    acc = EventAccumulator(str(tb.log_dir))
    acc.Reload()
    loss = acc.Scalars("loss/total")
    assert [(e.step, e.value) for e in loss] == [(1, 0.75), (2, 0.5)]
    assert acc.Scalars("lr")[0].value == pytest.approx(0.02)
    assert "curves/score" in acc.Tags()["images"]


def test_disabled_tensorboard_writes_nothing(tmp_path):
    tb = TensorboardLogger(tmp_path, enabled=False)
    tb.scalar("loss", 1.0, 0)
    tb.scalars({"a": 1.0}, 0)
    tb.close()
    assert not (tmp_path / "tensorboard").exists()


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_draws_on_a_terminal_only_when_enabled():
    shown, hidden = _Terminal(), _Terminal()
    assert list(progress(range(3), total=3, desc="frames", enabled=True, file=shown)) == [0, 1, 2]
    assert list(progress(range(3), total=3, desc="frames", enabled=False, file=hidden)) == [0, 1, 2]
    assert "frames" in shown.getvalue() and "3/3" in shown.getvalue()
    assert hidden.getvalue() == ""
    not_a_tty = io.StringIO()
    list(progress(range(3), desc="frames", enabled=True, file=not_a_tty))  # CI logs stay clean
    assert not_a_tty.getvalue() == ""
