"""Generators of small Kaggle-shaped data sets with answers, used by `make demo` and the tests."""
