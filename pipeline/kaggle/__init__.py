"""Kaggle: credentials, downloads, submissions, and safe extraction of the competition archives."""
