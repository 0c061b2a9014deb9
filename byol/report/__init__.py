"""Stage 5: what a run learned, for people: RUN_DIR/report.md and its pictures.

    report_command   `byol report` / `python -m byol.report`: report.md from a run directory's results
    verdict          did pretraining help? paired differences with 95% intervals (byol.evaluate.paired)
    gallery          neighbors.png: test images and their nearest training images
    projector        TensorBoard's embedding projector files

Importing this package imports nothing (no torch).
"""
