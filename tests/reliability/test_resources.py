"""Resource faults: an unwritable or full output folder is reported before any training work,
a disk that fills up mid-run and an out-of-memory batch become one line that says what to do."""

from __future__ import annotations

import errno
import io
import os
import shutil
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import torch

from clipdoctor.cli import main
from clipdoctor.data.datamodule import ClipDataModule
from clipdoctor.data.synthetic import generate
from clipdoctor.models.classifier import ClipClassifier
from clipdoctor.training import checkpoint_io

FLAGS = ["--backbone", "test_resnet", "--no-pretrained", "--proj-dim", "32", "--hidden", "32",
         "--frames", "6", "--frame-size", "36", "--size", "32", "--epochs", "2",
         "--batch-size", "8"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("res") / "data"
    generate(root, clips_per_class=8, frames=8, size=32, classes=["move_left", "move_right"])
    return root


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if any clip is decoded: the fault must be caught before that."""
    started = []

    def prepare(self, *a, **kw):
        started.append(True)
        raise AssertionError("training work started before the fault was reported")

    monkeypatch.setattr(ClipDataModule, "prepare", prepare)
    return started


def _train_line(data: Path, out: Path, tmp_path: Path, *extra: str) -> str:
    """Run `clipdoctor train`; it must exit 2 with one line on stderr, returned."""
    err = io.StringIO()
    with redirect_stderr(err):
        rc = main(["train", str(data), "--out", str(out), *FLAGS,
                   "--cache-dir", str(tmp_path / "cache"), *extra])
    lines = err.getvalue().strip().splitlines()
    assert rc == 2 and len(lines) == 1, (rc, lines)
    return lines[0]


def _fail_writes_in(folder: Path, code: int, monkeypatch) -> None:
    """Writes of files inside `folder` raise OSError(code), as the OS would."""
    real_write_text, real_mkstemp = Path.write_text, __import__("tempfile").mkstemp

    def write_text(self, *a, **kw):
        if Path(self).parent == folder:
            raise OSError(code, os.strerror(code), str(self))
        return real_write_text(self, *a, **kw)

    def mkstemp(*a, dir=None, **kw):
        if dir is not None and Path(dir) == folder:
            raise OSError(code, os.strerror(code), str(dir))
        return real_mkstemp(*a, dir=dir, **kw)

    monkeypatch.setattr(Path, "write_text", write_text)
    monkeypatch.setattr("tempfile.mkstemp", mkstemp)


def test_unwritable_run_folder_is_reported_before_training(data, tmp_path, no_work, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    _fail_writes_in(out, errno.EACCES, monkeypatch)
    line = _train_line(data, out, tmp_path)
    assert line.startswith(f"clipdoctor: error: {out}: cannot write the run folder (Permission "
                           "denied); pass --out with a writable folder")
    assert not no_work


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_read_only_run_folder_for_real(data, tmp_path, no_work):
    out = tmp_path / "run"
    out.mkdir()
    out.chmod(0o500)
    try:
        assert "cannot write the run folder" in _train_line(data, out, tmp_path)
    finally:
        out.chmod(0o700)


def test_full_disk_at_the_write_check_is_reported_before_training(data, tmp_path, no_work,
                                                                 monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    _fail_writes_in(out, errno.ENOSPC, monkeypatch)
    line = _train_line(data, out, tmp_path)
    assert f"{out}: the disk is full (No space left on device)" in line and "--out" in line
    assert not no_work


def test_too_little_free_space_is_reported_before_training(data, tmp_path, no_work, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: real(p)._replace(free=3 * 2**20))  # 3 MiB left
    line = _train_line(data, tmp_path / "run", tmp_path)
    assert f"{tmp_path / 'run'}: only 3 MiB free on its disk; the run needs about" in line
    assert not no_work


def test_disk_filling_up_mid_run_is_one_line(data, tmp_path, monkeypatch):
    def full(path, data):  # the first checkpoint write finds the disk full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint_io, "atomic_write_bytes", full)
    line = _train_line(data, tmp_path / "run", tmp_path)
    assert "the disk is full (No space left on device) while training" in line
    assert "--resume" in line


@pytest.mark.parametrize("error, device", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "GPU"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
                  "memory: you tried to allocate 8589934592 bytes."), "host"),
    (MemoryError(), "host"),
])
@pytest.mark.parametrize("frozen", [True, False])
def test_out_of_memory_batch_suggests_a_smaller_batch(data, tmp_path, monkeypatch, error, device,
                                                      frozen):
    def oom(self, *a, **kw):
        raise error

    # the frozen path trains the head on cached features; the other runs the whole model
    monkeypatch.setattr(ClipClassifier, "forward_cached" if frozen else "forward", oom)
    extra = () if frozen else ("--no-freeze-backbone",)
    line = _train_line(data, tmp_path / "run", tmp_path, *extra)
    assert f"out of {device} memory while training (batch 8 clips x 6 frames at 32 px)" in line
    assert "smaller --batch-size (e.g. 4)" in line and "--size (e.g. 24)" in line


def test_unrelated_runtime_errors_are_not_disguised(data, tmp_path, monkeypatch):
    def bug(self, *a, **kw):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(ClipClassifier, "forward_cached", bug)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        main(["train", str(data), "--out", str(tmp_path / "run"), *FLAGS,
              "--cache-dir", str(tmp_path / "cache")])


def test_full_disk_under_a_report_is_one_line(data, tmp_path, monkeypatch):
    """Outside training too (here the frame cache of `info`), ENOSPC is one line, exit 2."""
    import clipdoctor.io

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(clipdoctor.io, "atomic_write_bytes", full)
    err = io.StringIO()
    with redirect_stderr(err):
        rc = main(["info", str(data), "--cache-dir", str(tmp_path / "cache")])
    lines = err.getvalue().strip().splitlines()
    assert rc == 2 and len(lines) == 1, lines
    assert "the disk is full (No space left on device)" in lines[0]
    assert str(tmp_path / "cache") in lines[0]
