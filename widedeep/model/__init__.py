"""widedeep.model: the models and what rebuilds them.

- ``wide_deep``   the Wide & Deep ranker; ``two_tower`` the retriever; ``mlp`` their MLP
- ``build``       the one recipe from (task, FeatureSpace, settings) to a model
- ``checkpoint``  self-describing checkpoint directories (write, read at a path or URI)

A model imports no task package (train, serve, evaluation, retrieval, export).
"""
