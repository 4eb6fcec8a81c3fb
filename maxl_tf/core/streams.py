"""Independent random streams drawn from one seed: numpy Generators seeded by [seed, stream, ...].

The ids are part of every saved run's results (a run resumed or repeated draws the same numbers):
never renumber them.
"""

TRAIN_STREAM, META_STREAM, SPLIT_STREAM, RANDOM_LABEL_STREAM = 0, 1, 2, 7
