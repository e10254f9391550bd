"""Composing and validating vit-dt's Hydra configuration."""
from vit_dt.config.compose import compose, to_container
from vit_dt.config.validate import ConfigError, validate

__all__ = ["ConfigError", "compose", "to_container", "validate"]
