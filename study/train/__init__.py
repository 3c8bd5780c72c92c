"""The one shared trainer: the ResNet-RS models (models), the recipe (recipe: optimizer, LR
schedule, EMA, label smoothing), the epoch loop (trainer), checkpoints (checkpoint),
torch.compile's decision (compiling), several processes (distributed) and Optuna on the
minival split (tune).

May import: settings, data.
"""
