"""What never lands on disk: the W&B API key, and any value under a secret-looking key.

Every writer of something that leaves the process (the sweep's manifest and Hydra dump, each point's saved config,
the pickled task, the sbatch script, result.json, the W&B config) passes its content through these functions.
The key itself is only ever read by wandb from the environment that sbatch exports.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

REDACTED = "<redacted>"
SECRET_KEY_PARTS = ("key", "token", "secret", "password")
MIN_SECRET_LEN = 8     # shorter env values would redact ordinary words and numbers


def secret_values() -> list[str]:
    value = os.environ.get("WANDB_API_KEY", "")
    return [value] if len(value) >= MIN_SECRET_LEN else []


def looks_secret(key: str) -> bool:
    lowered = key.lower()
    return any(part in lowered for part in SECRET_KEY_PARTS)


def scrub_secrets(value: Any, secrets: list[str] | None = None) -> Any:
    """A copy with values under secret-looking keys and every occurrence of $WANDB_API_KEY's value redacted."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(value, Mapping):
        return {k: (REDACTED if looks_secret(str(k)) and v is not None else scrub_secrets(v, secrets))
                for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):   # lists, tuples, OmegaConf ListConfig
        return [scrub_secrets(v, secrets) for v in value]
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    return value


def holds_secret(text: Any) -> bool:
    """Whether `text` contains $WANDB_API_KEY's value (however it got there: typed, or an interpolation)."""
    return any(secret in str(text) for secret in secret_values())


def scrub_override(override: str) -> str:
    """A command-line override `key=value` fit to write down: the value redacted under a secret-looking key, and
    $WANDB_API_KEY's value redacted anywhere."""
    key, sep, _ = override.partition("=")
    if sep and looks_secret(key):
        return f"{key}={REDACTED}"
    return scrub_secrets(override)
