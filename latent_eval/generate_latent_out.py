"""Latent vectors of your own images (or a dataset split) from a trained encoder.

    python latent_eval/generate_latent_out.py --checkpoint runs/byol/encoder.pt --input photos/ --out latents/
    python latent_eval/generate_latent_out.py --checkpoint runs/byol/encoder.pt \\
           --input a.jpg b.png list.txt --out latents --format npy        # latents.npy + latents.paths.txt
    python latent_eval/generate_latent_out.py --checkpoint runs/byol/checkpoints/last.pt \\
           --input split:test --out test_latents --format csv --set data.root=/data
    python latent_eval/generate_latent_out.py --checkpoint runs/byol/encoder.pt --input photos/ \\
           --out latents/ --head features/heads/mlp.safetensors --strict

    byol latent --checkpoint runs/byol/encoder.pt --input photos/ --out latents/      # installed: the same

Inputs: images, folders, .txt lists, split:NAME. Outputs (--format): store (default; shards like
`python -m byol.extract`), npy or csv; --head adds a trained head's outputs. Checkpoints load with
weights_only=True (--trust-checkpoint allows pickle code). A stopped store resumes: run the same
command again. The full reference follows in --help (byol/extract/latent_command.py's docstring).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout, uninstalled

from byol.extract.latent_command import main  # noqa: E402

if __name__ == "__main__":
    main(doc=__doc__)
