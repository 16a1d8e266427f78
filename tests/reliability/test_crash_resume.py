"""Crash and resume: `clipdoctor train` killed with SIGKILL in the middle of training, then
`train --resume`, ends with the same metrics as an uninterrupted run of the same seed (CPU,
deterministic). Checkpoints are written atomically, and a damaged one is refused with one line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clipdoctor.data.synthetic import generate
from clipdoctor.errors import ClipdoctorError
from clipdoctor.training.checkpoint_io import AtomicCheckpointIO, load_checkpoint_file

CLI = "import sys; from clipdoctor.cli import main; sys.exit(main())"
TINY = ["--backbone", "test_resnet", "--no-pretrained", "--proj-dim", "32", "--hidden", "32",
        "--frames", "6", "--frame-size", "36", "--size", "32", "--patience", "100"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crash") / "data"
    generate(root, clips_per_class=12, frames=10, size=32, classes=["move_left", "move_right"])
    return root


def _env(cache: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CLIPDOCTOR_CACHE": str(cache),
            "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def _train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", CLI, "train", str(data), "--out", str(out), *TINY, *extra]


def _finished(cmd: list[str], env: dict) -> dict:
    return _metrics(cmd, subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600))


def _metrics(cmd: list[str], proc: subprocess.CompletedProcess | subprocess.Popen) -> dict:
    stderr = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.read().decode()
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads((Path(cmd[cmd.index("--out") + 1]) / "metrics.json").read_text())


def _kill_mid_training(cmd: list[str], env: dict, ckpt_dir: Path, delay_s: float,
                       saves: int = 1) -> None:
    """Start training, wait until last.ckpt has been written `saves` times (each atomic write
    is a new file: another inode or mtime), then `delay_s`, and SIGKILL. Counting saves, not
    seconds, keeps the kill inside the run however fast its epochs are."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 300
        written: set[tuple[int, int]] = set()
        while len(written) < saves:
            assert proc.poll() is None, f"training ended before the kill: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, f"{len(written)} of {saves} last.ckpt saves in 300 s"
            try:
                st = os.stat(ckpt_dir / "last.ckpt")
                written.add((st.st_ino, st.st_mtime_ns))
            except FileNotFoundError:
                pass
            time.sleep(0.005)
        time.sleep(delay_s)
        assert proc.poll() is None, "training finished before it could be killed; make it longer"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def _same_metrics(a: dict, b: dict) -> None:
    assert a["epochs"] == b["epochs"]
    for split in ("val", "test"):
        assert a[split]["loss"] == pytest.approx(b[split]["loss"], abs=1e-6), split
        assert a[split]["balanced_acc"] == b[split]["balanced_acc"], split
        assert a[split]["confusion"] == b[split]["confusion"], split


def _crash_and_resume(clips: Path, tmp_path: Path, options: list[str], stage: str,
                      delay_s: float, saves: int = 1) -> None:
    env = _env(tmp_path / "cache")
    reference = _train_cmd(clips, tmp_path / "full", *options)
    # the uninterrupted run goes alongside the one that is killed (2 cores: half the wait)
    with subprocess.Popen(reference, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env=env) as uninterrupted:
        crashed = tmp_path / "crashed"
        cmd = _train_cmd(clips, crashed, *options)
        _kill_mid_training(cmd, env, crashed / "checkpoints" / stage, delay_s, saves)
        uninterrupted.wait(timeout=600)
        full = _metrics(reference, uninterrupted)
    assert not (crashed / "metrics.json").exists()  # it really was interrupted
    left = load_checkpoint_file(crashed / "checkpoints" / stage / "last.ckpt")  # whole, readable
    epochs = int(options[options.index("--epochs") + 1])
    assert left["epoch"] < epochs - 1, "the kill came after the last epoch"
    resumed = _finished([*cmd, "--resume"], env)
    _same_metrics(resumed, full)
    a = load_checkpoint_file(tmp_path / "full" / "checkpoints" / "last.ckpt")["state_dict"]
    b = load_checkpoint_file(crashed / "checkpoints" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigkill_then_resume_matches_uninterrupted_run(clips, tmp_path):
    """Fast: the head on cached features, 10 short epochs; the kill lands after the second
    epoch's checkpoint (a fixed delay after the first one outlasted all ten epochs once stage-1
    epochs got faster)."""
    _crash_and_resume(clips, tmp_path, ["--epochs", "10", "--batch-size", "4"], "stage1",
                      delay_s=0.0, saves=2)


@pytest.mark.slow
def test_sigkill_mid_epoch_end_to_end_then_resume(clips, tmp_path):
    """End to end (backbone trains, ~1 s an epoch on 2 cores): the kill lands inside epoch 2."""
    _crash_and_resume(clips, tmp_path, ["--epochs", "6", "--batch-size", "2",
                                        "--no-freeze-backbone"], "stage1", delay_s=0.4)


# ---------------------------------------------------------------------------------------------
# atomic checkpoint files

def test_checkpoint_write_never_leaves_half_a_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpt" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, path)
    assert load_checkpoint_file(path)["epoch"] == 1
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600

    def dies(*a, **kw):  # the process "dies" after writing the temp file, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", dies)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint_file(path)["epoch"] == 1  # the previous good file, untouched
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # temp file removed


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "pickle"])
def test_damaged_last_ckpt_is_refused_with_one_line(tmp_path, damage):
    good = tmp_path / "good.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(64)}, "epoch": 3}, good)
    bad = tmp_path / "checkpoints" / "stage1" / "last.ckpt"
    bad.parent.mkdir(parents=True)
    data = good.read_bytes()
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        bad.write_bytes(b"\x00garbage" * 100)
    elif damage == "empty":
        bad.write_bytes(b"")
    else:  # a checkpoint whose pickle would run code: weights_only refuses it
        class Evil:
            def __reduce__(self):
                return (os.system, ("echo pwned",))

        torch.save({"state_dict": {}, "x": Evil()}, bad)
    with pytest.raises(ClipdoctorError) as err:
        AtomicCheckpointIO().load_checkpoint(bad)
    message = str(err.value)
    assert message.startswith(str(bad)) and "\n" not in message
    assert ("refused" if damage == "pickle" else "unreadable checkpoint") in message


def test_resume_from_a_damaged_checkpoint_is_one_line_on_the_cli(clips, tmp_path):
    from clipdoctor.cli import main

    out = tmp_path / "run"
    (out / "checkpoints" / "stage1").mkdir(parents=True)
    args = ["train", str(clips), "--out", str(out), *TINY, "--epochs", "1",
            "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    last = out / "checkpoints" / "stage1" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # as if copied in half, by hand
    import io
    from contextlib import redirect_stderr

    buf = io.StringIO()
    with redirect_stderr(buf):
        assert main([*args, "--resume"]) == 2
    lines = buf.getvalue().strip().splitlines()
    assert len(lines) == 1 and str(last) in lines[0] and "unreadable checkpoint" in lines[0], lines
