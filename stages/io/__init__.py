"""Input stages: sources that list files, and plain decoders."""
