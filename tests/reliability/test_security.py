"""Hostile input: checkpoints, weights and configs never run code when loaded; annotation paths
cannot leave the dataset root unless asked; names from data are shown as text in the HTML
report (checked in a real headless Chromium); nothing reaches the network unless pretrained
weights are asked for."""

from __future__ import annotations

import ast
import importlib.util
import io
import os
import socket
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import torch

from clipdoctor.cli import main
from clipdoctor.config import RunConfig, load_config, with_overrides
from clipdoctor.data.sources import load_source
from clipdoctor.data.synthetic import generate
from clipdoctor.errors import ClipdoctorError, DataError
from clipdoctor.training.checkpoint_io import load_checkpoint_file
from clipdoctor.training.evaluate import load_run
from clipdoctor.training.run import train

PACKAGE = Path(__file__).resolve().parents[2] / "clipdoctor"
TINY = {
    "model.backbone": "test_resnet", "model.pretrained": False, "model.proj_dim": 32,
    "model.hidden": 32, "data.frames": 6, "data.frame_size": 36, "data.size": 32,
    "data.batch_size": 8, "train.epochs": 1, "train.patience": 50,
}


class _Evil:
    """Pickles into a call of os.system: loading it with plain pickle would run a command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------------------------------------
# loaders that could run code

def _calls(name: str) -> list[ast.Call]:
    """Every call of `<something>.<name>(...)` in the package's source."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == name):
                found.append((path, node))
    return found


def _keyword(node: ast.Call, name: str):
    for kw in node.keywords:
        if kw.arg == name:
            return ast.literal_eval(kw.value) if isinstance(kw.value, ast.Constant) else kw.value
    return None


def test_every_torch_load_is_weights_only():
    loads = [(p, n) for p, n in _calls("load")
             if isinstance(n.func.value, ast.Name) and n.func.value.id == "torch"]
    assert loads, "no torch.load found: the scan is broken"
    unsafe = [f"{p.name}:{n.lineno}" for p, n in loads if _keyword(n, "weights_only") is not True]
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


def test_no_unsafe_yaml_pickle_or_numpy_loads():
    yaml_loads = [f"{p.name}:{n.lineno}" for p, n in _calls("load")
                  if isinstance(n.func.value, ast.Name) and n.func.value.id == "yaml"]
    assert not yaml_loads, f"yaml.load (use yaml.safe_load): {yaml_loads}"
    assert _calls("safe_load"), "no yaml.safe_load found: the scan is broken"
    pickles = [f"{p.name}:{n.lineno}" for name in ("load", "loads") for p, n in _calls(name)
               if isinstance(n.func.value, ast.Name) and n.func.value.id in ("pickle", "dill")]
    assert not pickles, f"pickle loads: {pickles}"
    np_pickle = [f"{p.name}:{n.lineno}" for p, n in _calls("load")
                 if _keyword(n, "allow_pickle") not in (None, False)]
    assert not np_pickle, f"np.load(allow_pickle=True): {np_pickle}"


def test_weights_file_with_code_is_refused(tmp_path):
    from clipdoctor.models.backbones import create_backbone

    marker = tmp_path / "pwned"
    weights = tmp_path / "weights.pt"
    torch.save({"state_dict": {"conv.weight": torch.ones(1)}, "x": _Evil(marker)}, weights)
    with pytest.raises(ClipdoctorError, match=r"weights\.pt: cannot read weights"):
        create_backbone("test_resnet", pretrained=False, weights=weights)
    assert not marker.exists()


def test_run_checkpoint_with_code_is_refused(tmp_path):
    generate(tmp_path / "data", clips_per_class=8, frames=8, size=32,
             classes=["move_left", "move_right"])
    config = with_overrides(RunConfig(), {**TINY, "data.cache_dir": tmp_path / "cache"})
    run = train(load_source(tmp_path / "data"), config, tmp_path / "run").path
    marker = tmp_path / "pwned"
    best = run / "checkpoints" / "best.ckpt"
    state = torch.load(best, weights_only=True)
    state["x"] = _Evil(marker)
    torch.save(state, best)
    # evaluate / predict / export read it with torch.load(weights_only=True): refused
    with pytest.raises(Exception, match=r"(?i)weights only load failed|refused"):
        load_run(run)
    assert not marker.exists()
    # training (resume, best weights) refuses it with one line naming the file
    with pytest.raises(ClipdoctorError, match=rf"^{best}: refused"):
        load_checkpoint_file(best)
    assert not marker.exists()


def test_yaml_config_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f'seed: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ClipdoctorError, match=r"config\.yaml: not valid YAML"):
        load_config(cfg)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# annotation paths stay inside the dataset root

@pytest.fixture
def outside_layout(tmp_path):
    """root/ with class folders a, b; one clip outside the root; a link to it inside."""
    root = tmp_path / "root"
    frames = generate(tmp_path / "src", clips_per_class=2, frames=6, size=32,
                      classes=["move_left", "move_right"])
    clips = sorted(Path(frames.root).rglob("*.mp4"))
    for i, clip in enumerate(clips[:3]):
        dest = root / ("a" if i < 2 else "b") / f"c{i}.mp4"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(clip.read_bytes())
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(clips[3].read_bytes())
    os.symlink(outside, root / "b" / "link.mp4")
    return root, outside


def _escape(kind: str, outside: Path) -> str:
    """A path to the outside clip as an annotation file would write it (from the root)."""
    return {"dotdot": "b/../../outside.mp4", "absolute": str(outside),
            "symlink": "b/link.mp4"}[kind]


def _manifest(root: Path, outside: Path, kind: str) -> Path:
    csv = root / "manifest.csv"
    csv.write_text(f"path,label\na/c0.mp4,a\na/c1.mp4,a\nb/c2.mp4,b\n{_escape(kind, outside)},b\n")
    return csv


def _ucf(root: Path, outside: Path, kind: str) -> Path:
    (root / "classInd.txt").write_text("1 a\n2 b\n")
    (root / "trainlist01.txt").write_text(f"a/c0.mp4 1\nb/c2.mp4 2\n{_escape(kind, outside)} 2\n")
    (root / "testlist01.txt").write_text("a/c1.mp4\n")
    return root


@pytest.mark.parametrize("layout", ["csv", "ucf101"])
@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_annotation_path_escapes_are_refused_unless_allowed(outside_layout, layout, kind):
    root, outside = outside_layout
    data = _manifest(root, outside, kind) if layout == "csv" else _ucf(root, outside, kind)
    with pytest.raises(DataError, match=r"escapes the dataset root .*--allow-outside-root"):
        load_source(data, layout)
    index = load_source(data, layout, allow_outside_root=True)
    reached = {os.path.realpath(s.path) for s in index.samples}
    assert str(outside) in reached


def test_allow_outside_root_on_the_command_line(outside_layout, tmp_path):
    root, outside = outside_layout
    csv = _manifest(root, outside, "dotdot")
    err = io.StringIO()
    with redirect_stderr(err):
        assert main(["info", str(csv), "--json", "--cache-dir", str(tmp_path / "c")]) == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and "escapes the dataset root" in lines[0], lines
    assert main(["info", str(csv), "--allow-outside-root", "--json",
                 "--cache-dir", str(tmp_path / "c")]) == 0
    # train / diagnose take it as a data option of the run config
    assert with_overrides(RunConfig(), {"data.allow_outside_root": True}).data.allow_outside_root
    from clipdoctor.cli import build_parser

    args = build_parser().parse_args(["train", str(csv), "--allow-outside-root"])
    assert vars(args)["cfg:data.allow_outside_root"] is True


# ---------------------------------------------------------------------------------------------
# names from data in the HTML report, in a real browser

XSS_CLASS = "<script>alert(1)</script>"
XSS_FILE = "<img src=x onerror=alert(1)>.mp4"


@pytest.fixture
def hostile_dataset(tmp_path):
    """A CSV manifest with a class named like a script tag and a broken file named like an
    image tag with an error handler (so it is listed as unreadable in the report)."""
    root = tmp_path / "hostile"
    src = generate(tmp_path / "src", clips_per_class=6, frames=8, size=32,
                   classes=["move_left", "move_right"])
    rows = ["path,label"]
    for i, clip in enumerate(sorted(Path(src.root).rglob("*.mp4"))):
        name = f"c{i}.mp4"
        (root / "clips").mkdir(parents=True, exist_ok=True)
        (root / "clips" / name).write_bytes(clip.read_bytes())
        rows.append(f"clips/{name},{XSS_CLASS if 'left' in str(clip) else 'plain'}")
    (root / "clips" / XSS_FILE).write_bytes(b"not a video at all")
    rows.append(f'"clips/{XSS_FILE}","{XSS_CLASS}"')
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def _report_tests():
    """tests/report/test_report.py, loaded by path (test folders are not packages)."""
    path = Path(__file__).resolve().parents[1] / "report" / "test_report.py"
    spec = importlib.util.spec_from_file_location("_clipdoctor_report_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


chromium = _report_tests().chromium  # the report tests' headless Chromium fixture, reused


def test_hostile_names_are_text_in_the_html_report(hostile_dataset, tmp_path, chromium):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    from clipdoctor.doctor.runner import diagnose

    data = load_source(hostile_dataset)
    assert XSS_CLASS in data.classes
    config = with_overrides(RunConfig(), {**TINY, "data.cache_dir": tmp_path / "cache"})
    report = diagnose(data, config=config, budget_s=15)
    page = report.to_html(tmp_path / "report.html")
    assert XSS_FILE not in Path(page).read_text()  # never raw in the page, escaped everywhere
    driver = chromium
    driver.get(Path(page).as_uri())
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 — no alert fired
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
    body = driver.find_element(By.TAG_NAME, "body").text
    assert XSS_CLASS in body  # shown literally, as text
    assert XSS_FILE in body  # the unreadable file is listed by its name
    assert len(driver.find_elements(By.TAG_NAME, "script")) == 1  # the JSON data only
    sources = [i.get_attribute("src") for i in driver.find_elements(By.TAG_NAME, "img")]
    assert all(s.startswith("data:") for s in sources), sources  # no <img src=x> made it in


# ---------------------------------------------------------------------------------------------
# no network unless pretrained weights are asked for

def test_train_diagnose_predict_never_touch_the_network(tmp_path, monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted in an offline test")

    generate(tmp_path / "data", clips_per_class=8, frames=8, size=32,
             classes=["move_left", "move_right"])
    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: refuse(*a))
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, *a: refuse(*a))
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)

    flags = ["--backbone", "test_resnet", "--no-pretrained", "--proj-dim", "32", "--hidden", "32",
             "--frames", "6", "--frame-size", "36", "--size", "32", "--epochs", "1",
             "--cache-dir", str(tmp_path / "cache")]
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "data"), "--out", str(run), *flags]) == 0
    assert main(["diagnose", str(tmp_path / "data"), "--run", str(run), "--budget", "8",
                 "--json", str(tmp_path / "report.json")]) in (0, 1)
    clip = next((tmp_path / "data").rglob("*.mp4"))
    assert main(["predict", str(run), str(clip), "--json"]) == 0
    assert not attempts, attempts
