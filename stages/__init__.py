"""Built-in stages, one folder per family; installed as ``datapipe.stages``."""
