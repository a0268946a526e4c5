"""Demo helpers: offline sample data and example pipelines for trying datapipe."""
