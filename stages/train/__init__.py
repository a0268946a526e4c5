"""Trainers: Sink stages at the end of the DAG that train a :mod:`datapipe.models` network on
the run's committed samples with :func:`datapipe.train.fit`, reading them through the
streaming loader (:func:`datapipe.stream.from_shards`). The only family that may use the
stream. Each writes ``OUT/train/NODE/``: ``model.pt``, ``model.json``, ``report.json``,
``curves.png``, ``confusion.png`` and a checkpoint per epoch."""
