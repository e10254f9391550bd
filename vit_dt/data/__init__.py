"""Datasets and the input pipeline: `build.build_datasets` -> `loader.make_loader` -> `augment.DeviceAugment`.

This package's root imports nothing, so the login side can use `verify` (and `errors`) without torch.

    train, val, info = build_datasets(cfg.dataset, scaling_cfg=cfg.scaling, world_size=W, seed=cfg.trainer.seed)
    loader = make_loader(train, rank=r, world_size=W, batch_size=cfg.trainer.micro_batch, seed=seed,
                         train=True, device=device, num_workers=workers)
    augment = info.device_augment(cfg.model.image_size, train=True)
    for epoch in ...: loader.set_epoch(epoch); for images, labels in loader: x = augment(images) ...
"""
