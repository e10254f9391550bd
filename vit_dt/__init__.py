"""vit-dt: data-parallel ViT scaling studies on Slurm."""
__version__ = "0.1.0"
