"""A grid of points: composing and checking every point before any trains (compose), the
Hydra callback around a sweep (callback), the study's manifest, the grid it declared (manifest),
its progress bar and ETA (progress), files between the sweep's jobs (handoff), and copying a
data set at the size a sweep needs (prepare).

May import: every floor below (settings, record, data, train, measure, point).
"""


def __getattr__(name: str):
    """`study.sweep.SweepCallback`, the callback's path in configs saved before the move."""
    if name == "SweepCallback":
        from study.sweep.callback import SweepCallback

        return SweepCallback
    raise AttributeError(name)
