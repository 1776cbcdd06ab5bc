"""Checkpointer: save/load/latest, pruning, atomicity; RNG capture/restore."""
import errno
import os
import random

import numpy as np
import pytest
import torch

from episodic.checkpoint import Checkpointer, capture_rng_state, restore_rng_state
from episodic.errors import DataError


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_empty_folder_has_no_checkpoint(tmp_path):
    ck = Checkpointer(tmp_path / "run")
    assert ck.latest() is None
    assert ck.load() is None
    assert not ck.has_checkpoint()


def test_save_then_load_latest_round_trips_state(tmp_path):
    ck = Checkpointer(tmp_path)
    model = torch.nn.Linear(2, 3)
    ck.save("model_0000010.pth", {"model": model.state_dict(), "iteration": 10})
    path = ck.save("model_0000020.pth", {"model": model.state_dict(), "iteration": 20})
    assert ck.latest() == path
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000020.pth"
    state = ck.load()
    assert state["iteration"] == 20
    assert torch.equal(state["model"]["weight"], model.weight.detach())
    assert ck.load(tmp_path / "model_0000010.pth")["iteration"] == 10


def test_prune_keeps_newest_periodic_and_protected(tmp_path):
    ck = Checkpointer(tmp_path, keep_last=2)
    (tmp_path / "notes.pth").write_text("not a checkpoint of ours")
    ck.save("model_best.pth", {"i": -1})
    for it in (5, 10, 15, 20):
        ck.save(f"model_{it:07d}.pth", {"i": it})
    ck.save("model_final.pth", {"i": 99})
    assert _names(tmp_path) == [
        "last_checkpoint",
        "model_0000015.pth",
        "model_0000020.pth",
        "model_best.pth",
        "model_final.pth",
        "notes.pth",
    ]
    assert ck.load()["i"] == 99


def test_prune_orders_unpadded_names_numerically(tmp_path):
    ck = Checkpointer(tmp_path, keep_last=1)
    for it in (9, 10):
        ck.save(f"model_{it}.pth", {"i": it})
    assert (tmp_path / "model_10.pth").exists() and not (tmp_path / "model_9.pth").exists()


def test_keep_last_none_keeps_everything(tmp_path):
    ck = Checkpointer(tmp_path, keep_last=None)
    for it in range(5):
        ck.save(f"model_{it:07d}.pth", {"i": it})
    assert len(ck.periodic_checkpoints()) == 5


def test_failing_save_leaves_previous_checkpoint_intact(tmp_path):
    ck = Checkpointer(tmp_path)
    ck.save("model_0000001.pth", {"i": 1})
    with pytest.raises(Exception):
        ck.save("model_0000002.pth", {"unpicklable": lambda x: x})
    assert ck.latest().name == "model_0000001.pth"
    assert ck.load()["i"] == 1
    assert _names(tmp_path) == ["last_checkpoint", "model_0000001.pth"]  # no partial/temp file


def test_dangling_pointer_is_reported(tmp_path):
    (tmp_path / "last_checkpoint").write_text("model_0000007.pth\n")
    with pytest.raises(DataError, match="model_0000007.pth"):
        Checkpointer(tmp_path).latest()


@pytest.mark.parametrize("bad", ["../x.pth", "sub/x.pth", "last_checkpoint"])
def test_save_rejects_paths_as_names(tmp_path, bad):
    with pytest.raises(ValueError):
        Checkpointer(tmp_path).save(bad, {})


def _draws():
    return (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(4).tolist())


def test_rng_restore_reproduces_draws_through_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's legacy state
    ck = Checkpointer(tmp_path)
    ck.save("model_0000001.pth", {"rng": capture_rng_state()})
    expected = _draws()
    _draws()  # move every generator on
    restore_rng_state(Checkpointer(tmp_path).load(weights_only=True)["rng"])
    assert _draws() == expected


def _torch_save_on_full_disk(obj, f, *args, **kwargs):
    """What torch.save does when the disk fills up: the OSError of the write, wrapped."""
    f.write(b"PK\x03\x04 partial")
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")


def test_full_disk_says_so_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path, keep_last=1)
    ckpt.save("model_0000001.pth", {"it": torch.tensor(1)})
    monkeypatch.setattr(torch, "save", _torch_save_on_full_disk)
    with pytest.raises(OSError) as e:
        ckpt.save("model_0000002.pth", {"it": torch.tensor(2)})
    assert e.value.errno == errno.ENOSPC
    assert e.value.strerror == (f"no space left on {tmp_path} (writing model_0000002.pth; "
                                "the previous checkpoint model_0000001.pth is kept)")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000001.pth"]
    assert int(ckpt.load()["it"]) == 1


def test_truncated_latest_checkpoint_falls_back_to_the_newest_readable(tmp_path, caplog):
    ckpt = Checkpointer(tmp_path, keep_last=3)
    for it in (1, 2, 3):
        ckpt.save(f"model_{it:07d}.pth", {"it": torch.tensor(it)})
        os.utime(tmp_path / f"model_{it:07d}.pth", ns=(it * 10**9, it * 10**9))  # distinct mtimes
    latest = tmp_path / "model_0000003.pth"
    latest.write_bytes(latest.read_bytes()[:40])  # truncated
    with caplog.at_level("WARNING"):
        state = ckpt.load()
    assert int(state["it"]) == 2 and ckpt.loaded == tmp_path / "model_0000002.pth"
    assert any("model_0000003.pth is unreadable" in r.getMessage() and "resuming from model_0000002.pth"
               in r.getMessage() for r in caplog.records)
    for it in (1, 2):
        (tmp_path / f"model_{it:07d}.pth").write_bytes(b"garbage")
    with pytest.raises(DataError, match="no readable checkpoint to resume from"):
        ckpt.load()
