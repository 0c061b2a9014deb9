"""byol: BYOL self-supervised pretraining, HDF5 feature stores and evaluation, CPU to multi-node GPU.

The stages, one package each (see the README's layout section):

    byol.data       datasets and augmentation          byol.pretrain   BYOL model, optimisers, loop
    byol.encoders   building and loading encoders      byol.store      the HDF5 feature store
    byol.evaluate   heads, logreg, kNN, PCA on stores  (torch-free)

This module imports nothing heavy: `import byol.evaluate` must not pull in torch.
"""
__version__ = "0.1.0"
