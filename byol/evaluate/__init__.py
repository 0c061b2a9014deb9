"""Downstream evaluation of stored features: classification heads and baselines.

Everything here reads only the HDF5 feature store (`byol.store`), never the trainer or the
images, so every method is compared on the same features. One concept per module:

    splits     open train/test stores, refuse incompatible or unusable ones, carve the validation split
    blocks     read selected rows in blocks (in order or shuffled), streaming standardisation, re-batching
    results    top-k accuracy, confusion matrix, results files that never overwrite earlier ones
    neighbors  kNN with a running top-k over train blocks; uniform and temperature-weighted votes
    logreg     scikit-learn logistic regression (lbfgs, C chosen on validation), streaming fallback
    pca        PCA fitted over blocks (streamed covariance, or IncrementalPCA), applied block by block
    heads      MLP / linear heads in numpy: forward, gradients, hidden activations + probabilities
    head_file  a trained head's file (safetensors + JSON metadata), written atomically, read without pickle
    training   training a head (numpy AdamW) over shuffled row blocks, epochs chosen on validation
    passes     what heads and logreg's SGD share: a shuffled epoch, scoring block by block, validation figures
    options    the settings every method shares, and their command-line flags
    runner     one method end to end: data -> fit -> test figures -> results files

Which methods stream (memory independent of the number of rows) and which hold data in memory:

    knn, pca-knn         stream: test queries in chunks, one pass over the train blocks per chunk,
                         keeping only a running top-k per query
    mlp, linear heads    stream: shuffled row blocks each epoch, standardisation stats from a streaming pass
    pca-*                stream the scaler and PCA fits (covariance or IncrementalPCA)
    logreg, pca-logreg   exact lbfgs needs the (PCA-reduced, for pca-logreg) training matrix in memory;
                         when that exceeds --max-memory-mb they fall back to SGD logistic regression
                         over shuffled blocks (scikit-learn, no torch); the JSON says which ran (`solver`)
                         and whether the run streamed (`streams`)

All methods keep the label column of each store in memory (8 bytes a row).
No method imports torch (tests/test_heads.py checks): `import torch` alone is 500-670 MB of resident
memory with the pinned CUDA wheel, over the evaluation memory budget. Importing this package is cheap.
"""
