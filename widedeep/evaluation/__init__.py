"""widedeep.evaluation: offline evaluation of trained models against the full item catalog.

- ``topk``       ``widedeep evaluate --task topk``: retrieval, retrieval + ranking and baselines,
                 through the candidate policy the online Retriever uses (``widedeep.retrieval``)
- ``baselines``  most-popular, item-kNN and EASE

Scoring a split with the training task's own metrics (``widedeep evaluate``) is
``widedeep.train.evaluate``: it reuses the training tasks' batches and validation metrics.
"""
