"""Key frames: which frames of a video to keep (``keyframes.*``).

- ``methods``: the selection functions (uniform, TSN, I-frames, motion peaks, scene cuts);
- ``stages``: their Map stages ``keyframes.uniform``, ``keyframes.tsn``,
  ``keyframes.iframes``, ``keyframes.motion``, ``keyframes.scene``;
- ``learned``: ``keyframes.cues``, ``keyframes.learned_fit`` and ``keyframes.learned``, a
  learned scorer over cheap compressed-domain cues;
- ``decode`` (the frame table, decoding only the selected frames), ``signals`` (cheap
  per-frame signals), ``index`` (index arithmetic on plain arrays).

A new key-frame method goes here. Video opening and the motion-vector field come from
``common/``.
"""
