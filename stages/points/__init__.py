"""Point clouds (``points.*``).

- ``read``: ``points.read`` (PLY, PCD, XYZ, XYZN, PTS), with the header checks run before any
  decoder allocates (``header``, ``header_ply``, ``header_pcd``) and a strict ASCII row parser
  (``rows``);
- ``voxelize``: ``points.voxelize``, voxel-grid quantization;
- ``sampling``: ``points.random``, ``points.voxel``, ``points.fps`` (exact FPS, compiled in
  ``fps_kernel``);
- ``learned``, ``snet``: ``points.learned_fit`` and ``points.learned``, the task-aware S-NET
  sampler.

A new point-cloud reader, sampler or per-cloud transform goes here.
"""
