"""evaluate / predict / export on a real (tiny) trained run, through the command line."""

from __future__ import annotations

import json

import pytest
import torch

from clipdoctor.cli import main
from clipdoctor.data.sources import load_source
from clipdoctor.data.synthetic import generate
from clipdoctor.export import export_onnx, export_torchscript
from clipdoctor.training.evaluate import load_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    data = base / "data"
    generate(data, clips_per_class=8, frames=8, size=32, classes=["grow", "shrink", "move_up"])
    args = ["train", str(data), "--out", str(base / "run"), "--backbone", "test_resnet",
            "--no-pretrained", "--frames", "4", "--frame-size", "36", "--size", "32",
            "--epochs", "2", "--proj-dim", "16", "--hidden", "16", "--cache-dir", str(base / "c")]
    assert main(args) == 0
    return data, base / "run"


def test_evaluate_writes_metrics_and_confusion(trained, tmp_path, capsys):
    data, run = trained
    out = tmp_path / "m.json"
    png = tmp_path / "cm.png"
    assert main(["evaluate", str(run), str(data), "--json", str(out), "--confusion", str(png)]) == 0
    m = json.loads(out.read_text())
    assert m["split"] == "test" and m["clips"] == sum(map(sum, m["confusion"]))
    assert 0 <= m["balanced_acc"] <= 1 and m["top5"] == 1.0  # 3 classes: top-5 holds all
    assert set(m["per_class_recall"]) == {"grow", "move_up", "shrink"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "balanced accuracy" in capsys.readouterr().out


def test_evaluate_matches_metrics_json(trained, tmp_path):
    from clipdoctor.training.evaluate import evaluate

    data, run = trained
    m = evaluate(run, load_source(data), "test")
    saved = json.loads((run / "metrics.json").read_text())["test"]
    assert m["confusion"] == saved["confusion"]
    assert m["loss"] == pytest.approx(saved["loss"], abs=1e-5)


def test_predict_video_files_json(trained, capsys):
    data, run = trained
    clip = next((data / "grow").glob("*.mp4"))
    broken = data / "broken.mp4"
    broken.write_text("no")
    try:
        assert main(["predict", str(run), str(clip), str(broken), "--topk", "2", "--json"]) == 0
    finally:
        broken.unlink()
    out = json.loads(capsys.readouterr().out)
    assert len(out[0]["top"]) == 2 and out[0]["top"][0]["prob"] >= out[0]["top"][1]["prob"]
    assert {t["label"] for t in out[0]["top"]} <= {"grow", "shrink", "move_up"}
    assert "not a readable video" in out[1]["error"]


def test_predict_missing_file_is_exit_2(trained, capsys):
    _, run = trained
    assert main(["predict", str(run), "nope.mp4"]) == 2
    assert "nope.mp4: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("head", ["bilstm", "gru", "transformer", "attention", "meanpool"])
def test_export_parity_for_every_head(tmp_path, head):
    from clipdoctor.config import ModelConfig
    from clipdoctor.models.classifier import build_classifier

    model = build_classifier(ModelConfig(backbone="test_resnet", pretrained=False, head=head,
                                         proj_dim=16, hidden=16), 3).eval()
    onnx = export_onnx(model, tmp_path / "m.onnx", frames=4, size=32)
    ts = export_torchscript(model, tmp_path / "m.pt", frames=4, size=32)
    assert onnx.max_abs_diff < 1e-4 and ts.max_abs_diff < 1e-4
    assert (tmp_path / "m.onnx").exists() and (tmp_path / "m.pt").exists()
    assert list(tmp_path.glob(".*tmp")) == []


@pytest.mark.parametrize("pool,rgb_diff,feature_diff", [("gap", "shared", False),
                                                       ("grid", "separate", True),
                                                       ("attention", "shared", True)])
def test_export_parity_with_motion_inputs(tmp_path, pool, rgb_diff, feature_diff):
    """Frame differences are computed inside the model: exported graphs must carry them."""
    from clipdoctor.config import ModelConfig
    from clipdoctor.models.classifier import build_classifier

    model = build_classifier(ModelConfig(backbone="test_resnet", pretrained=False, pool=pool,
                                         rgb_diff=rgb_diff, feature_diff=feature_diff,
                                         proj_dim=16, hidden=16), 3).eval()
    onnx = export_onnx(model, tmp_path / "m.onnx", frames=4, size=32)
    ts = export_torchscript(model, tmp_path / "m.pt", frames=4, size=32)
    assert onnx.max_abs_diff < 1e-4 and ts.max_abs_diff < 1e-4
    x = torch.randn(1, 4, 3, 32, 32)
    still = x[:, :1].expand(1, 4, 3, 32, 32)  # a static clip: the difference stream must matter
    with torch.no_grad():
        assert not torch.allclose(model(x), model(still), atol=1e-4)
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "m.pt"))(still), model(still),
                                   atol=1e-4, rtol=0)


def test_export_command(trained, tmp_path, capsys):
    _, run = trained
    assert main(["export", str(run), "--onnx", str(tmp_path / "a.onnx"),
                 "--torchscript", str(tmp_path / "a.pt")]) == 0
    out = capsys.readouterr().out
    assert out.count("max abs difference") == 2
    loaded = torch.jit.load(str(tmp_path / "a.pt"))
    model = load_run(run).model
    x = torch.randn(1, 4, 3, 32, 32)
    assert torch.allclose(loaded(x), model(x), atol=1e-4)


def test_not_a_run_folder_is_exit_2(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--onnx", str(tmp_path / "a.onnx")]) == 2
    assert "not a finished run" in capsys.readouterr().err
