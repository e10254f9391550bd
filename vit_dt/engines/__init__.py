"""DeepSpeed or plain DDP behind one small interface, so the training loop does not care which runs.

An engine does one micro-step (forward, backward, and at the accumulation boundary the all-reduce and optimizer
step), evaluates, and reports the wall-clock breakdown of the last optimizer step when timing was switched on.

Fast-path switches (docs/performance.md): `trainer.compile` compiles the module in place (DeepSpeed's
`engine.compile()`, `nn.Module.compile` for DDP), so parameter names and checkpoints are the same either way; the
optimizer comes from `vit_dt.optim.optimizers` (torch's fused AdamW on CUDA, never DeepSpeed's FusedAdam JIT build).
"""
from vit_dt.engines.base import TrainEngine, compile_options, compile_requested, cuda_graphs_requested, make_scheduler
from vit_dt.engines.ddp_engine import DDPEngine
from vit_dt.engines.deepspeed_engine import DeepSpeedEngine

__all__ = ["DDPEngine", "DeepSpeedEngine", "TrainEngine", "compile_options", "compile_requested",
           "cuda_graphs_requested", "make_scheduler"]
