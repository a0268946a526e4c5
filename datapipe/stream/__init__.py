"""Streaming PyTorch datasets over a run's shards or a live pipeline."""
