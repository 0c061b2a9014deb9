"""Which code made a file: the versions recorded in every checkpoint, encoder.json, feature store
and pipeline summary, so a figure can be traced to the libraries that produced it.

One function, low in the house, so training, extraction and the pipeline record the same facts
without importing each other.
"""
from __future__ import annotations

from byol import __version__


def library_versions() -> dict:
    """{"byol": ..., "torch": ..., "torchvision": ...}: torch's own version strings (e.g. 2.14.1+cpu)."""
    import torch                 # here, not at import time: byol.base stays importable without torch
    import torchvision
    return {"byol": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__)}
