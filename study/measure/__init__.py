"""What a model costs: parameters, FLOPs, activations, inference and training-step latency,
peak memory, the machine (costs), and every architecture of a sweep measured alone on an
idle machine (alone). `python -m study.measure` prints one model's complexity.

May import: settings, record, data, train.
"""
