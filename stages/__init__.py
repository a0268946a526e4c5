"""Built-in stages, installed as ``datapipe.stages``: one folder per family, one family per
modality. Where a new stage goes:

- ``io/``: sources that list inputs (``files``) and plain pixel decoders (``image.resize``);
- ``compressed/``: compressed-domain readers that take what a codec already computed instead
  of decoding pixels: JPEG DCT coefficients (``jpeg_*``: ``jpeg.dct``) and video motion
  vectors, frame types, packets, CoViAR (``video_*``: ``video.*``);
- ``subset/``: dataset subsampling: the ``select.*`` Select stages and the ``embed.*`` Maps
  that give them an embedding;
- ``keyframes/``: key frames within a video (``keyframes.*``);
- ``points/``: point clouds (``points.*``): reading, voxel grids, point sampling, the learned
  S-NET sampler;
- ``represent/``: representations a model is fed (``represent.*``): dynamic images,
  progressive resizing;
- ``common/``: what several families share (safe image and video opening, the JPEG header
  parser and libturbojpeg binding, the motion-vector field, synthetic clips). No stage is
  registered there.

A family imports from ``common/`` and from itself, never from another family. A stage is
registered by its entry point in ``pyproject.toml`` (``[project.entry-points."datapipe.stages"]``);
its module is imported only when the stage is used.
"""
