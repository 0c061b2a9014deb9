"""Controlled learning curves: ours and the peers on the same images, views, steps and kNN probe.

Every system trains on the same uint8 tensor of CIFAR-10's train images (decoded once, cached in
--workdir) in the same shuffled order, at the same batch and view size, for the same steps; every
--eval-every steps (and at step 0) the *same* kNN monitor scores the encoder (eval mode, our
`eval_transform`, weighted kNN k=200 T=0.07 with a memory bank of --bank-per-class train images a
class, the full test set). So the curves differ only by what the system does, and one part can be
swapped at a time:

    python benchmarks/learning_curve.py --data /tmp/cifar10 --system ours --steps 800 \
        --recipe configs/short_cpu.yaml optimizer.params.lr=0.06         # ours, any config override
    python benchmarks/learning_curve.py --data ... --system byol-pytorch  # lucidrains' byol-pytorch
    python benchmarks/learning_curve.py --data ... --system byol-pytorch --aug ours   # its net, our views
    python benchmarks/learning_curve.py --data ... --system lightly       # lightly's heads, loss, views

Peers are imported, never copied (`pip install byol-pytorch==0.9.1 lightly`). `--aug ours` feeds a
peer our BYOLViews (per-sample, on the device); `--aug peer` keeps the peer's own. `--opt` overrides
a peer's optimiser (`adam:3e-4`, `sgd:0.4` with momentum 0.9, wd 4e-4). --check-sklearn recomputes the
last kNN score with scikit-learn's KNeighborsClassifier on the same vectors (an independent check).
Prints one JSON row per evaluation and a final JSON object with the curve.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from byol.data.augment import BYOLViews  # noqa: E402
from byol.data.image_folder import ImageFolder  # noqa: E402
from byol.pretrain.monitor import embed_dataset, weighted_knn_scores  # noqa: E402
from byol.pretrain.small_input_conv import use_small_input_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def cached_split(root: Path, split: str, size: int, workdir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N, 3, size, size] and int64 [N] labels of ROOT/split, decoded once (cached as .npy)."""
    cache = workdir / f"{root.name}-{split}-{size}px.npz"
    if not cache.exists():
        ds = ImageFolder(root, split, size)
        x = np.stack([ds.load(i).numpy() for i in range(len(ds))])
        workdir.mkdir(parents=True, exist_ok=True)
        np.savez(cache, x=x, y=ds.labels)
    data = np.load(cache)
    return torch.from_numpy(data["x"]), torch.from_numpy(data["y"]).long()


def bank_subset(y: torch.Tensor, per_class: int) -> torch.Tensor:
    """The first `per_class` indices of every class (a fixed, balanced memory bank)."""
    return torch.cat([(y == c).nonzero().flatten()[:per_class] for c in range(int(y.max()) + 1)])


class Probe:
    """The one kNN score every system gets: our monitor's code on fixed bank/test sets."""

    def __init__(self, bank, test, size: int):
        self.bank, self.test, self.size = bank, test, size
        self.last = None

    def __call__(self, encoder: torch.nn.Module) -> float:
        bank_f, bank_y = embed_dataset(encoder, torch.utils.data.TensorDataset(*self.bank), self.size, torch.device("cpu"))
        test_f, test_y = embed_dataset(encoder, torch.utils.data.TensorDataset(*self.test), self.size, torch.device("cpu"))
        scores = weighted_knn_scores(bank_f, bank_y, test_f, 10)
        self.last = (bank_f, bank_y, test_f, test_y)
        return float((scores.argmax(1) == test_y).double().mean() * 100)

    def sklearn_check(self) -> float:
        """The same kNN (cosine, k=200, exp(sim/0.07) votes) by scikit-learn on the stored vectors."""
        from sklearn.neighbors import KNeighborsClassifier
        bank_f, bank_y, test_f, test_y = (t.numpy() for t in self.last)
        unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
        knn = KNeighborsClassifier(n_neighbors=200, metric="cosine", algorithm="brute",
                                   weights=lambda d: np.exp((1.0 - d) / 0.07))
        knn.fit(unit(bank_f), bank_y)
        return float((knn.predict(unit(test_f)) == test_y).mean() * 100)


def build_ours(args, overrides, steps: int, steps_per_epoch: int):
    """Our networks, optimiser and schedules from a recipe + overrides (the library's own builders)."""
    from byol.config import load_config, to_dict
    from byol.pretrain.model import byol_loss
    from byol.pretrain.optim import Schedule, build_optimizer, set_learning_rate
    from byol.pretrain.setup import build_networks
    cfg = load_config(args.recipe, [f"data_transforms.input_shape=({args.size},{args.size},3)",
                                    f"trainer.batch_size={args.batch}", *overrides])
    torch.manual_seed(args.seed)
    online, target = build_networks(cfg)
    online.to(memory_format=torch.channels_last)
    target.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg.optimizer, [online], args.batch)
    sched = Schedule(steps, round(cfg.optimizer.warmup_epochs * steps_per_epoch), opt.param_groups[0]["lr"],
                     cfg.trainer.m, cfg.optimizer.lr_schedule, cfg.trainer.m_schedule)
    tf = cfg.data_transforms
    views = BYOLViews(args.size, s=tf.s, min_scale=tf.min_scale, blur=tf.blur)

    def step(images_u8, k, gen):
        (v1, v2), _ = views.views(images_u8, gen)
        set_learning_rate(opt, sched.lr(k))
        loss, z = byol_loss(online, target, v1.contiguous(memory_format=torch.channels_last),
                            v2.contiguous(memory_format=torch.channels_last))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        target.update(online, sched.tau(k))
        return loss.item()
    return online.encoder, step, to_dict(cfg)


def peer_optimizer(spec: str, params):
    name, lr = spec.split(":")
    if name == "adam":
        return torch.optim.Adam(params, lr=float(lr))
    return torch.optim.SGD(params, lr=float(lr), momentum=0.9, weight_decay=4e-4)


def build_byol_pytorch(args, steps: int):
    """lucidrains' byol-pytorch as its README runs it (Adam 3e-4, EMA 0.99, 4096-256 heads)."""
    import torchvision
    from byol_pytorch import BYOL
    torch.manual_seed(args.seed)
    net = torchvision.models.resnet18(weights=None)
    use_small_input_path(net)           # exact, only faster (byol/pretrain/small_input_conv.py): same for all
    kwargs = {}
    if args.aug == "ours":
        views = BYOLViews(args.size)
        to_u8 = lambda x: x.mul(255).round_().to(torch.uint8)  # noqa: E731  (its input is [0, 1] floats)
        kwargs = dict(augment_fn=lambda x: views.apply(to_u8(x), views.sample_params(len(x), 1)),
                      augment_fn2=lambda x: views.apply(to_u8(x), views.sample_params(len(x), 2)))
    learner = BYOL(net, image_size=args.size, hidden_layer="avgpool", projection_size=256,
                   projection_hidden_size=4096, moving_average_decay=0.99, use_simplicial_embeddings=False,
                   **kwargs)
    opt = peer_optimizer(args.opt or "adam:3e-4", learner.parameters())

    def step(images_u8, k, gen):
        loss = learner(images_u8.float().div_(255))
        opt.zero_grad()
        loss.backward()
        opt.step()
        learner.update_moving_average()
        return loss.item()
    encoder = torch.nn.Sequential(*list(net.children())[:-1], torch.nn.Flatten())
    return encoder, step, {"system": "byol-pytorch", "opt": args.opt or "adam:3e-4", "aug": args.aug}


def build_lightly(args, steps: int):
    """lightly's BYOL parts (heads, loss, momentum update and schedule, BYOLTransform views), as in its
    CIFAR-10 benchmark: SGD 0.06 x batch/128, momentum 0.9, wd 5e-4; EMA cosine 0.99 -> 1."""
    import copy
    import torchvision
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
    from lightly.models.utils import update_momentum
    from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform
    from lightly.utils.scheduler import cosine_schedule
    from PIL import Image
    torch.manual_seed(args.seed)
    net = torchvision.models.resnet18(weights=None)
    use_small_input_path(net)
    backbone = torch.nn.Sequential(*list(net.children())[:-1], torch.nn.Flatten())
    projector, predictor = BYOLProjectionHead(512, 4096, 256), BYOLPredictionHead(256, 4096, 256)
    online = torch.nn.ModuleDict(dict(backbone=backbone, projector=projector, predictor=predictor))
    target = copy.deepcopy(torch.nn.ModuleDict(dict(backbone=backbone, projector=projector))).requires_grad_(False)
    criterion = NegativeCosineSimilarity()
    opt = peer_optimizer(args.opt, online.parameters()) if args.opt else torch.optim.SGD(
        online.parameters(), lr=0.06 * args.batch / 128, momentum=0.9, weight_decay=5e-4)
    if args.aug == "peer":
        tf = BYOLTransform(BYOLView1Transform(input_size=args.size, gaussian_blur=0.0),
                           BYOLView2Transform(input_size=args.size, gaussian_blur=0.0))

        def make_views(images_u8, gen):
            pairs = [tf(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in images_u8]
            return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    else:
        views = BYOLViews(args.size)

        def make_views(images_u8, gen):
            return views(images_u8, gen)

    def step(images_u8, k, gen):
        m = cosine_schedule(k, steps, 0.99, 1.0)
        update_momentum(online["backbone"], target["backbone"], m)
        update_momentum(online["projector"], target["projector"], m)
        x0, x1 = make_views(images_u8, gen)
        p0 = online["predictor"](online["projector"](online["backbone"](x0)))
        p1 = online["predictor"](online["projector"](online["backbone"](x1)))
        with torch.no_grad():
            z0, z1 = target["projector"](target["backbone"](x0)), target["projector"](target["backbone"](x1))
        loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()
    return backbone, step, {"system": "lightly", "opt": args.opt or f"sgd:{0.06 * args.batch / 128}", "aug": args.aug}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="image folder with train/ and test/")
    ap.add_argument("--system", choices=("ours", "byol-pytorch", "lightly"), default="ours")
    ap.add_argument("--aug", choices=("peer", "ours"), default="peer",
                    help="a peer's own views or ours (the system ours always uses its own)")
    ap.add_argument("--opt", default="", help="peer optimiser override: adam:LR or sgd:LR")
    ap.add_argument("--recipe", default=str(ROOT / "configs" / "short_cpu.yaml"), help="ours: config file")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--bank-per-class", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/byol-curves"))
    ap.add_argument("--check-sklearn", action="store_true")
    ap.add_argument("--save", type=Path, default=None, help="write the trained encoder's state dict here")
    ap.add_argument("overrides", nargs="*", help="ours: section.key=value on top of --recipe")
    args = ap.parse_args()

    x_train, y_train = cached_split(args.data, "train", args.size, args.workdir)
    x_test, y_test = cached_split(args.data, "test", args.size, args.workdir)
    keep = bank_subset(y_train, args.bank_per_class)
    probe = Probe((x_train[keep], y_train[keep]), (x_test, y_test), args.size)
    steps_per_epoch = len(x_train) // args.batch
    if args.system == "ours":
        encoder, step, settings = build_ours(args, args.overrides, args.steps, steps_per_epoch)
    elif args.system == "byol-pytorch":
        encoder, step, settings = build_byol_pytorch(args, args.steps)
    else:
        encoder, step, settings = build_lightly(args, args.steps)

    curve, losses, t0, train_s = [], [], time.perf_counter(), 0.0
    order = torch.Generator().manual_seed(args.seed)
    perm = torch.randperm(len(x_train), generator=order)
    for k in range(args.steps + 1):
        if k % args.eval_every == 0 or k == args.steps:
            row = {"step": k, "epoch": round(k / steps_per_epoch, 2), "knn": round(probe(encoder), 2),
                   "loss": round(float(np.mean(losses[-50:])), 4) if losses else None,
                   "train_min": round(train_s / 60, 1)}
            curve.append(row)
            print(json.dumps(row), flush=True)
        if k == args.steps:
            break
        if k % steps_per_epoch == 0 and k:
            perm = torch.randperm(len(x_train), generator=order)
        i = (k % steps_per_epoch) * args.batch
        t = time.perf_counter()
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + k)
        losses.append(step(x_train[perm[i:i + args.batch]], k, gen))
        train_s += time.perf_counter() - t
        if not math.isfinite(losses[-1]):
            raise SystemExit(f"loss became {losses[-1]} at step {k}")
    out = {"system": args.system, "aug": args.aug, "steps": args.steps, "batch": args.batch, "size": args.size,
           "epochs": round(args.steps / steps_per_epoch, 2), "overrides": args.overrides, "opt": args.opt,
           "curve": [(r["step"], r["knn"]) for r in curve], "img_per_s": round(args.steps * args.batch / train_s, 1),
           "total_min": round((time.perf_counter() - t0) / 60, 1)}
    if args.check_sklearn:
        out["sklearn_knn"] = round(probe.sklearn_check(), 2)
    if args.save:
        torch.save(encoder.state_dict(), args.save)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
