"""Inference: the `predict` path in clips/s at batch 1 and 32, and ONNX Runtime vs PyTorch.

A run is trained for one epoch with the default model (resnet10t, grid pooling, BiLSTM, 8
frames at 112 px, random initial weights: speed does not depend on them) on a small demo
set. Then, in the same process:

* `clip_scores` (what `clipdoctor predict` runs per video: decode the sampled frames without
  a cache, transform, backbone, head) on 16 videos, one video per call (batch 1) and all 16 in
  one call (`compute_features` runs the backbone on batches of 16 clips, so a call with 32
  videos runs two such batches: batch 16 is the largest the predict path uses);
* the model alone on ready clips (B, 8, 3, 112, 112) at batch 1 and 32, in PyTorch and as
  the exported ONNX model (`clipdoctor export`) under onnxruntime.
"""

from __future__ import annotations

import time

import torch

from common import Result, cli, demo_data, interleaved, ratio_row, workdir

NAME = "inference"


def measure(quick: bool) -> Result:
    from clipdoctor.config import RunConfig, with_overrides
    from clipdoctor.data.datamodule import ClipDataModule
    from clipdoctor.data.sources import Sample, SourceIndex, load_source
    from clipdoctor.export import export_onnx
    from clipdoctor.training.evaluate import clip_scores, load_run, predict
    from clipdoctor.training.run import train

    result = Result(NAME)
    with workdir(NAME) as root:
        data = demo_data(root / "demo", clips_per_class=6)
        cfg = with_overrides(RunConfig(), {"model.pretrained": False, "train.epochs": 1,
                                           "data.cache_dir": root / "cache"})
        index = load_source(data)
        train(index, cfg, root / "run")
        loaded = load_run(root / "run")
        model = loaded.model.eval()
        paths = sorted(p for p in data.rglob("*.mp4"))[:16]
        samples = [Sample(p.resolve(), 0, "test", name=p.name) for p in paths]
        dm = ClipDataModule(SourceIndex("files", data, loaded.classes, samples),
                            loaded.config.data.model_copy(update={"cache": False}),
                            mean=model.info.mean, std=model.info.std)
        n = len(samples)
        clip_scores(model, dm, samples[:2])  # warm-up

        def one_by_one():
            for s in samples:
                clip_scores(model, dm, [s])

        t = interleaved({"predict_b1": one_by_one,
                         "predict_b32": lambda: clip_scores(model, dm, samples)}, repeat=1)
        t0 = time.perf_counter()
        predict(root / "run", paths[:8])
        predict_cli_s = time.perf_counter() - t0
        ratio_row(result, f"predict path: {n} videos in one call vs one per call (clips/s)",
                  t["predict_b1"] / t["predict_b32"], None,
                  f"{n / t['predict_b1']:.1f} clips/s at batch 1, {n / t['predict_b32']:.1f} at "
                  f"batch {n} (decode + transform + model); `predict()` of 8 files incl. loading "
                  f"the run: {predict_cli_s:.1f} s")

        frames, size = cfg.data.frames, cfg.data.size
        onnx_path = root / "model.onnx"
        t0 = time.perf_counter()
        exported = export_onnx(model, onnx_path, frames, size)
        export_s = time.perf_counter() - t0
        import onnxruntime as ort

        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        rates = {}
        for b in (1, 32):
            x = torch.randn(b, frames, 3, size, size)
            xn = x.numpy()
            session.run(None, {"clips": xn})
            with torch.no_grad():
                model(x)
            reps = 4 if b == 1 else 1
            tt = interleaved({
                "torch": lambda: [_no_grad(model, x) for _ in range(reps)],
                "onnx": lambda: [session.run(None, {"clips": xn}) for _ in range(reps)]},
                repeat=2)
            rates[b] = {k: b * reps / v for k, v in tt.items()}
            ratio_row(result, f"ONNX Runtime vs PyTorch, model only, batch {b} (clips/s)",
                      rates[b]["onnx"] / rates[b]["torch"], None,
                      f"{rates[b]['onnx']:.1f} vs {rates[b]['torch']:.1f} clips/s "
                      f"(8 x 112 px frames per clip)")
        result.details = {
            "clips": n, "predict_clips_per_s": {"batch1": round(n / t["predict_b1"], 2),
                                                f"batch{n}": round(n / t["predict_b32"], 2)},
            "predict_8_files_s": round(predict_cli_s, 2), "onnx_export_s": round(export_s, 1),
            "onnx_max_abs_diff": exported.max_abs_diff,
            "model_clips_per_s": {str(b): {k: round(v, 2) for k, v in r.items()}
                                  for b, r in rates.items()},
            "threads": torch.get_num_threads(), "ort_threads": "default (all cores)"}
    return result


def _no_grad(model, x):
    with torch.no_grad():
        return model(x)


if __name__ == "__main__":
    cli(NAME, measure)
