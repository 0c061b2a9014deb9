"""Stage 3: run an encoder (or raw pixels) over images and write what comes out.

    extract_command   `byol extract` / `python -m byol.extract`: a dataset split -> HDF5 feature store
    latent_command    `byol latent`: latent vectors for any image files (store, .npy or .csv)
    embed_loop        the one embedding core both commands share: batches -> encoder -> sink
    latent_outputs    latent's three output formats
    export_command    `byol export`: the encoder as TorchScript or ONNX, checked against PyTorch

Importing this package imports nothing (no torch): each command loads what it needs.
"""
