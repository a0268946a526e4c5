"""Point clouds (``points.*``).

- ``read``: ``points.read`` (PLY, PCD, XYZ, XYZN, PTS), with the header checks run before any
  decoder allocates (``header``, ``header_ply``, ``header_pcd``) and a strict ASCII row parser
  (``rows``);
- ``voxelize``: ``points.voxelize``, voxel-grid quantization;
- ``sampling``: ``points.random``, ``points.voxel``, ``points.fps`` (exact FPS, compiled in
  ``fps_kernel``);
- ``learned``: ``points.learned_fit`` and ``points.learned``, the task-aware sampler; its
  network and matching (``snet``: S-NET, SampleNet's soft projection), its training against a
  frozen PointNet (``snet_train``) and its picture beside FPS (``picture``).

A new point-cloud reader, sampler or per-cloud transform goes here.
"""
