"""Cached stages: teachers, students and control models, features and shift reports, keyed by content."""
