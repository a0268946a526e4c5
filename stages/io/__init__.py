"""Input stages: sources that list inputs (``files``) and plain pixel decoders
(``image.resize``).

A new source (a manifest, an existing shard set) or a stage that decodes an image to pixels
the ordinary way goes here. Reading a codec's own data instead of pixels belongs in
``compressed/``; the image opening and decoding itself lives in ``common/images.py``, shared
with ``represent.resize``.
"""
