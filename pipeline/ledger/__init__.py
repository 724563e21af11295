"""The SQLite ledger of every run, and comparisons between runs."""
