"""Stage 2: BYOL pretraining. `train(cfg)` runs the loop (`loop.py`) over the model (`model.py`),
optimisers and schedules (`optim.py`), checkpoint format (`checkpoint.py`), metrics log
(`metrics.py`), kNN monitor (`monitor.py`) and time budget (`budget.py`).

`train` and `resume_config` load on first use, so importing the package stays cheap."""
__all__ = ["resume_config", "train"]

_PUBLIC = {"resume_config": "byol.pretrain.checkpoint", "train": "byol.pretrain.loop"}


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'byol.pretrain' has no attribute {name!r}")
