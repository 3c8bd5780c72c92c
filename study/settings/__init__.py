"""What a point is, before anything runs: the schema of every setting and its checks
(config), the ResNet-RS model family as facts (family), the point key (grid), what a point
trained on (identity: an image folder's fingerprint), the recipe's YAML rules
(regularization), and what this machine offers to resolve `auto` (hardware).

May import: nothing of study outside settings.
"""
