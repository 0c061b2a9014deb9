"""byol: BYOL self-supervised pretraining, HDF5 feature stores and evaluation, CPU to multi-node GPU.

    from byol import BYOL      # wrap any nn.Module: loss = learner(images); learner.update_target()
    from byol import train     # the full trainer: byol.train(byol.load_config("config.yaml"))

The stages, one package each, bottom up (see docs/reference/layout.md; tests/test_imports.py
keeps every import pointing down this list):

    byol.base       errors, atomic writes, locks, signals, devices, durations, the kNN core
    byol.config     the one config schema            byol.store      the HDF5 feature store
    byol.data       datasets and augmentation        byol.encoders   building and loading encoders
    byol.evaluate   heads, logreg, kNN, PCA on stores (torch-free)
    byol.pretrain   BYOL model, optimisers, loop     byol.extract    encoders over images -> stores
    byol.report     report.md, verdict, gallery      byol.pipeline   all of it in one command

Importing this package imports nothing heavy (`import byol.evaluate` must not pull in torch):
the public names below are loaded on first use.
"""
__version__ = "0.1.0"

_PUBLIC = {"BYOL": "byol.api", "train": "byol.pretrain.loop", "load_config": "byol.config",
           "Config": "byol.config"}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'byol' has no attribute {name!r}")
