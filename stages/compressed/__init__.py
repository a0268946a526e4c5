"""Compressed-domain readers: JPEG DCT coefficients, codec motion vectors and frame types,
point clouds."""
