"""A scaling study of image classifiers, in the data's order.

A point's life, floor by floor (an import only points to a floor below; tests/test_layout.py
checks it):

    settings what a point is: the schema and its checks, the model family, the point key,
             the machine's facts (imports nothing of study)
    record   what a point leaves: the MLflow record, redaction, provenance, the server and UI
    data     images in: data sets, crops and batches, streaming, image folders
    train    the shared trainer: models, recipe, trainer, checkpoints, compile, DDP, tuning
    measure  what a model costs: parameters, FLOPs, latency, measured alone
    point    one grid point's lifecycle: lease, resume, interruptions, placement, packing
    sweep    a grid: composing and checking points, the Hydra callback, progress, hand-off

Front doors: `python -m study.run` (Hydra: one point, or `--multirun` a sweep), `python -m
study.decide` (the adaptive study), `python -m study.server` (a shared tracking server).
"""
