"""The shared engine: teacher -> split-aware pseudo-labels -> student -> validated Kaggle submission."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter hides the progress lines
