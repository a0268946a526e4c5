"""Representation stages: dynamic images (approximate rank pooling) and progressive resizing."""
