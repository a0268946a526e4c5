"""What the stage families share; no stage is registered here.

Every family (``io``, ``compressed``, ``subset``, ``keyframes``, ``points``, ``represent``)
may import from this package; a family never imports another family. A helper that a second
family needs moves here, so each family folder holds only its own stages and their
algorithms.

- ``images``: opening and decoding untrusted images (Pillow, libturbojpeg at a reduced DCT
  scale), for ``image.resize`` and ``represent.resize``.
- ``jpeg_header``, ``libturbojpeg`` (+ the optional C row filter ``_jpeg_filter.c``),
  ``jpeg_coefficients``: JPEG marker checks, the ctypes binding to the system libturbojpeg,
  and the DCT-coefficient container (``JpegDCT``) that ``jpeg.dct`` produces and
  ``represent.resize`` decodes.
- ``video_open`` (with ``video_files``, ``video_damage``), ``video_refs``, ``video_kernels``,
  ``motion_vectors``: safe opening and decoding of untrusted videos with PyAV, damage
  accounting, reference distances, and the motion-vector field, for the ``video.*`` and
  ``keyframes.*`` stages.
- ``video_synth``: synthetic clips with known motion, for the demo's sample data, the tests
  and the benchmarks.

As in the stage modules, heavy libraries (PyAV, numba) are imported inside the functions
that use them (``video_kernels``, numba at its top, is itself imported only that way), so
importing a stage class stays cheap.
"""
