"""Export the encoder alone (no projector/predictor) to TorchScript or ONNX, and check it.

    python -m byol.extract.export_command runs/byol/encoder.pt --format torchscript --out encoder.ts
    python -m byol.extract.export_command runs/byol/checkpoints/last.pt --format onnx --out encoder.onnx
    python -m byol.extract.export_command resnet18-byol.pth --format onnx --out enc.onnx --trust-checkpoint  # pickled file

The exported model takes NORMALISED float32 images [N, 3, S, S] (N and, for ONNX, H/W dynamic
where the exporter allows) and returns the pooled features [N, D]. FILE.json beside it records
the input spec, the normalisation (x = (pixel / 255 - mean) / std, RGB), the output dimension and
the checkpoint's provenance. After writing, the exported model is run on random inputs and
compared with the PyTorch encoder; the maximum absolute difference is in the JSON summary (last
stdout line). Differences above --tolerance (default 1e-4) exit 1.

ONNX needs the `onnx` and `onnxscript` packages (torch.onnx's exporter) and `onnxruntime` to check
the file; without them `--format onnx` stops with a one-line error saying what to install.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
from pathlib import Path

import numpy as np
import torch

from byol.base.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from byol.base.errors import ConfigError, ExportError
from byol.encoders.source import load_source

log = logging.getLogger("byol")

FORMATS = ("torchscript", "onnx")


def _check_inputs(size: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def export_torchscript(module: torch.nn.Module, example: torch.Tensor, out: Path):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch.jit is deprecated in recent releases but still works
        traced = torch.jit.trace(module, example, check_trace=False)
        # Saved to memory, then written by Python: when the disk refuses a write (ENOSPC, EFBIG), torch's
        # own file writer aborts the process (SIGABRT, a C++ stack dump, the temp file left behind).
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        atomic_write_bytes(out, buffer.getvalue())
        loaded = torch.jit.load(str(out), map_location="cpu")

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return loaded(x).numpy()
    return run


def export_onnx(module: torch.nn.Module, example: torch.Tensor, out: Path, opset: int = 18):
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(f"--format onnx needs the packages {', '.join(missing)} "
                          f"(pip install {' '.join(missing)}); --format torchscript needs nothing more")
    import onnxruntime as ort
    with atomic_path(out) as tmp:      # the ONNX writer is Python's: a refused write is an OSError
        try:
            torch.onnx.export(module, (example,), str(tmp), input_names=["images"], output_names=["features"],
                              dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
                              opset_version=opset, dynamo=True, external_data=False, verbose=False)
        except TypeError:   # an older exporter without the `dynamo` / `external_data` arguments
            torch.onnx.export(module, (example,), str(tmp), input_names=["images"], output_names=["features"],
                              dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}}, opset_version=opset)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> np.ndarray:
        return session.run(None, {name: x.numpy()})[0]
    return run


def export(checkpoint, fmt: str, out, trust_checkpoint: bool = False, tolerance: float = 1e-4,
           batch: int = 2) -> dict:
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    source, _ = load_source(checkpoint, (), None, trust_checkpoint)
    module = source.module.float().eval().requires_grad_(False)
    size = source.image_size
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = _check_inputs(size, 1, seed=1)
    run = (export_torchscript if fmt == "torchscript" else export_onnx)(module, example, out)   # whole or not at all
    x = _check_inputs(size, batch)
    with torch.no_grad():
        expected = module(x).numpy()
    got = run(x)
    if got.shape != expected.shape:
        raise ExportError(f"exported model gives {got.shape}, PyTorch {expected.shape}")
    max_diff = float(np.abs(got - expected).max())
    spec = {"format": fmt, "file": out.name, "encoder": source.name, "output_dim": source.dim,
            "input": {"name": "images" if fmt == "onnx" else "x", "shape": ["N", 3, size, size],
                      "dtype": "float32", "layout": "NCHW", "channels": "RGB", "dynamic": ["N"]},
            "output": {"name": "features", "shape": ["N", source.dim], "layer": source.layer},
            "normalisation": {**source.normalisation, "formula": "(pixel / 255 - mean) / std"},
            "checkpoint": source.checkpoint, "checkpoint_sha256": source.checkpoint_sha256, "step": source.step,
            "check": {"inputs": f"randn({batch}, 3, {size}, {size}), seed 0", "max_abs_diff": max_diff,
                      "tolerance": tolerance}}
    json_path = Path(f"{out}.json")
    atomic_write_text(json_path, json.dumps(spec, indent=2))
    summary = {"out": str(out), "spec": str(json_path), "format": fmt, "encoder": source.name,
               "output_dim": source.dim, "image_size": size, "max_abs_diff": max_diff, "ok": max_diff <= tolerance}
    if max_diff > tolerance:
        raise ExportError(f"exported {fmt} model differs from PyTorch by {max_diff:.3g} (> {tolerance}); "
                            f"summary: {json.dumps(summary)}")
    return summary


def main(argv=None, prog: str = "python -m byol.extract.export_command") -> None:
    from byol.command_line import add_checkpoint_arguments, parse_arguments, run_command
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="encoder.pt, checkpoints/*.pt, or an importable ResNet checkpoint")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest absolute difference accepted")
    add_checkpoint_arguments(parser)
    args = parse_arguments(parser, argv)
    run_command(lambda: export(args.checkpoint, args.format, args.out, args.trust_checkpoint, args.tolerance))


if __name__ == "__main__":
    main()
