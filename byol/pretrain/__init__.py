"""Stage 2: BYOL pretraining. `train(cfg)` runs the loop (`loop.py`) over the model (`model.py`),
optimisers and schedules (`optim.py`), checkpoint format (`checkpoint.py`), metrics log
(`metrics.py`) and kNN monitor (`monitor.py`)."""
from byol.pretrain.checkpoint import resume_config
from byol.pretrain.loop import train

__all__ = ["resume_config", "train"]
