"""Training: data -> DeepSpeed engine on Ray Train workers -> checkpoints -> HF export."""
