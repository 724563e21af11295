"""Cache of a frozen pretrained backbone's embeddings of every image, computed once per data, backbone, weights and
size: with a frozen backbone, every fit of a run then trains only a small head on them."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.cache.stage import cache_key, folder_of, get_or_compute, lines_digest, weights_identity
from pipeline.run.config import RunConfig

# bump when the backbones or the embedding code change what a cached embedding would contain
# (8: the teacher cache's version, which keyed these entries too before the caches were split)
CACHE_VERSION = 8
FEATURE_FILES = ("features.npy",)


def features_key(cfg: RunConfig, paths: list[str], fingerprint: str) -> str:
    return cache_key({"version": CACHE_VERSION, "data": fingerprint, "paths": lines_digest(paths),
                      "backbone": cfg.backbone, "weights": weights_identity(cfg.weights), "image_size": cfg.image_size})


def get_or_embed(cfg: RunConfig, paths: list[str], pixels: np.ndarray, fingerprint: str) -> np.ndarray:
    """Embeddings of every image (rows of `pixels`, named by `paths`) by the frozen backbone."""
    folder = folder_of(cfg, "features", features_key(cfg, paths, fingerprint))

    def load(folder: Path) -> np.ndarray:
        features = np.load(folder / "features.npy", mmap_mode="r", allow_pickle=False)
        if features.ndim != 2 or len(features) != len(paths):
            raise ValueError(f"features.npy has shape {features.shape}, expected ({len(paths)}, n)")
        return features

    def embed() -> tuple[np.ndarray, dict]:
        from pipeline.model import backbones
        from pipeline.model import train

        backbone = backbones.pretrained_backbone(cfg.backbone, cfg.image_size, cfg.weights)
        features = train.embed(backbone, pixels, cfg.batch_size, "train+test")
        return features, {"features.npy": lambda path: np.save(path, features, allow_pickle=False)}

    return get_or_compute(folder, FEATURE_FILES, load, embed, f"features: cached in {folder}")[0]
