"""Representations a model is fed (``represent.*``).

- ``dynamic_image`` (with ``rank_pool``, ``rank_pool_kernel``, ``rank_weights``):
  ``represent.dynamic_image``, a clip pooled into one image by approximate rank pooling;
- ``resize`` (with ``schedule``, ``resample``, ``dct_decode``): ``represent.resize``,
  progressive resizing with small sizes decoded straight from the JPEG or its DCT
  coefficients.

A stage that turns decoded or compressed-domain data into another representation goes here.
"""
