"""The seed of every fit a run makes, derived from --seed, and the largest of them (--seed's bound follows from it).

numpy's seeds, and so keras.utils.set_random_seed's, must be below 2**32. A run derives the seed of each fit from
--seed with the functions below (the fit of a student seeds its streams of pseudo-labeled items with its seed + 1 and
+ 2, pipeline/model/batches.py).
"""
from __future__ import annotations

SEED_LIMIT = 2 ** 32


def teacher_seed(seed: int, model: int) -> int:
    return seed + model


def control_seed(seed: int, model: int) -> int:
    return seed + 7 + model


def student_seed(seed: int, round: int, pseudo_fold: int, model: int) -> int:
    """A first-round student draws its train batches as its control does (common random numbers): what differs
    between the two is the pseudo-labels, not the luck of the draw, so the verdict compares like with like."""
    return control_seed(seed, model) if round == 1 else seed + 1000 * round + 100 * pseudo_fold + model


def largest_derived_seed(seed: int, folds: int, pseudo_rounds: int, pseudo_folds: int) -> int:
    """The largest seed a run with these options passes to numpy and TensorFlow (see SEED_LIMIT)."""
    return max(teacher_seed(seed, folds - 1), control_seed(seed, folds - 1),
               student_seed(seed, pseudo_rounds, pseudo_folds - 1, folds - 1) + 2)
