"""Dataset-level selection stages (barriers)."""
