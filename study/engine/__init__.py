"""The training engine: trainer, step, optimizer with AGC, checkpoints, data pipelines, latency."""
