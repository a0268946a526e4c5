"""Dataset subsampling: which samples to keep.

- ``random_subset``, ``stratified``, ``kcenter``, ``dedup``, ``uncertainty``: the Select
  stages (barriers) ``select.random``, ``select.stratified``, ``select.kcenter``,
  ``select.dedup``, ``select.uncertainty``;
- ``embed``: ``embed.pixels`` and ``embed.torch``, the Maps that give them an embedding field;
- ``budget`` (the budget and views every budgeted selector shares), ``plot`` (a picture of a
  selection).

A new dataset-level selector or embedding goes here. Selecting frames within a video is
``keyframes/``; selecting points within a cloud is ``points/``.
"""
