"""Backbones, fitting and predicting (thin Keras), and multi-device / multi-worker distribution."""
