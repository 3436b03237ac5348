"""widedeep.train: training on Ray Train (V2) and everything a run leaves behind.

- ``config``: the strict job config (``platform/jobs/*.yaml``, ``--set key=value``).
- ``tasks``: what is trained (the task protocol and registry); ``ranking_task`` (Wide & Deep,
  with ``negatives``) and ``retrieval_task`` (the two-tower retriever).
- ``driver``: Ray Data pipeline + ``TorchTrainer`` + best-checkpoint selection (``widedeep train``).
- ``loop``: the per-worker loop (DDP for dense params, exact sparse exchange, reports, resume).
- ``evaluate``: scoring a prepared split (``widedeep evaluate``) with the task's validation metrics;
  ``pointwise_metrics``: AUC, log loss, calibration, RMSE.
- ``warm_start``: initialise from an earlier checkpoint, remapping rows by vocabulary value.
- ``schedule``: stateless learning-rate schedules; ``bench``: ``widedeep bench train``.

Checkpoints are written and read by ``widedeep.model.checkpoint``. Importing this package is
cheap (no Ray / Torch imports here).
"""
