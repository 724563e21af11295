"""One run: its options, its stages, its folder and outputs, resume, rescore and sweeps."""
