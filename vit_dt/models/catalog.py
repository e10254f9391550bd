"""The models vit-dt builds, by name: importable without torch, so validating a sweep on a login node stays fast."""

# Names that fix a geometry: their config keys must keep these values (the patch size and image size may change:
# `model=vit_b_16 model.patch_size=8` is ViT-B/8). vit_tiny takes its dimensions from the config.
FIXED_DIMS = {
    "vit_b_16": {"num_layers": 12, "num_heads": 12, "hidden_dim": 768, "mlp_dim": 3072},   # ViT-B
}


def tokens_per_image(image_size: int, patch_size: int) -> int:
    """The encoder's sequence length: one token per patch plus the class token."""
    return (int(image_size) // int(patch_size)) ** 2 + 1


def geometry_errors(model) -> list[str]:
    """What is wrong with the typed model config's sizes (a config.schema.ModelSchema), as messages naming the bad
    value and what would be valid."""
    errors = []
    for key in ("image_size", "patch_size"):
        value = getattr(model, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            errors.append(f"model.{key}={value!r} is invalid: it must be an integer >= 1")
    if errors:
        return errors
    image, patch = model.image_size, model.patch_size
    if image % patch:
        divisors = [p for p in range(2, min(image, 64) + 1) if image % p == 0]
        errors.append(f"model.image_size={image} is not a multiple of model.patch_size={patch}; "
                      f"patch sizes that divide {image}: {', '.join(map(str, divisors)) or 'none up to 64'}")
    for key, expected in FIXED_DIMS.get(model.name, {}).items():
        if getattr(model, key) != expected:
            errors.append(f"model.{key}={getattr(model, key)!r} is invalid for model.name={model.name}: "
                          f"it is fixed at {expected} (only image_size and patch_size may change; "
                          f"model=vit_tiny takes any dimensions)")
    return errors
