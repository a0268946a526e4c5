"""Compressed-domain readers: what a codec already computed, read instead of decoded pixels.

- ``jpeg_dct``: ``jpeg.dct``, the quantized DCT coefficients of a JPEG;
- ``video_mv``, ``video_frames``, ``video_packets``, ``video_coviar``: ``video.motion_vectors``,
  ``video.frame_types``, ``video.iframes``, ``video.packets``, ``video.coviar``.

A new reader of a JPEG or video bitstream goes here, named ``jpeg_*`` or ``video_*``. The
parts other families use too (safe video opening, the motion-vector field, the JPEG header
parser and libturbojpeg binding) are in ``common/``; point clouds are in ``points/``.
"""
