"""Latent vectors of your own images (or a dataset split) from a trained encoder.

    python latent_eval/generate_latent_out.py --checkpoint runs/byol/encoder.pt --input photos/ --out latents/
    python latent_eval/generate_latent_out.py --checkpoint runs/byol/encoder.pt \\
           --input a.jpg b.png list.txt --out latents --format npy        # latents.npy + latents.paths.txt
    python latent_eval/generate_latent_out.py --checkpoint runs/byol/checkpoints/last.pt \\
           --input split:test --out test_latents --format csv --set data.root=/data
    python latent_eval/generate_latent_out.py --checkpoint runs/byol/encoder.pt --input photos/ \\
           --out latents/ --head features/heads/mlp.safetensors --strict

Inputs: image files (any extension), folders (recursive, image extensions), .txt lists (one path
a line, relative to the list's folder), split:NAME (the checkpoint's dataset; change its data
settings with section.key=value arguments, e.g. data.root=/data, or --set data.root=/data).
--format store (default): OUT/ is a feature-store split (shards + manifest.json, `paths` per row),
the same shard format as `python -m byol.extract`; npy: OUT.npy + OUT.paths.txt; csv: OUT.csv.
--head HEAD adds the head's hidden layer, class probabilities and predicted class (store: shard
datasets head_hidden/head_probs/head_pred; npy: OUT.head_*.npy; csv: h*, p_<class>, pred columns).
Unreadable inputs are skipped and listed in OUT/skipped.json (store) or OUT.skipped.json; --strict
exits 2 naming them. A store stopped midway (Ctrl-C, SIGTERM) resumes: run the same command again.
Checkpoints load with weights_only=True; --trust-checkpoint allows pickle code.
The last stdout line is a JSON summary: n_inputs, n_written, n_skipped, dim, out, format, ...
Full reference: byol/latent.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout, uninstalled

from byol.latent import main  # noqa: E402

if __name__ == "__main__":
    main(doc=__doc__)
