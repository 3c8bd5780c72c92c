"""Images in: data sets and their splits, and whether they fit in memory (sets), image
folders (imagefiles), per-image crops, RandAugment and batches on the device (batches,
augment), streaming from files (stream), and the point's batcher, in memory or streamed
(loader).

May import: settings.
"""
