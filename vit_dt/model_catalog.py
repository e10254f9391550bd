"""The models vit-dt builds, by name: importable without torch, so validating a sweep on a login node stays fast."""

MODEL_NAMES = ("vit_tiny", "vit_b_16")
