"""widedeep.train: training on Ray Train (V2) and everything a run leaves behind.

- ``config``: the strict job config (``platform/jobs/*.yaml``, ``--set key=value``).
- ``tasks``: what is trained (the task protocol and registry); ``ranking_task`` (Wide & Deep,
  with ``negatives``) and ``retrieval_task`` (the two-tower retriever).
- ``driver``: job planning (``data_cache``), ``TorchTrainer``, best-checkpoint selection and the
  metrics JSON (``widedeep train``).
- ``loop``: the per-worker loop, in parts: ``worker`` (set-up, DDP, resume), ``feed`` (train
  batches cached in memory or streamed by Ray Data, validation shares), ``step``, ``validate``,
  ``reporting`` (reports, asynchronous checkpoint upload), ``timings`` and ``progress`` (where the
  time goes), ``hooks`` (callbacks; the tests' fault injection).
- ``evaluate``: scoring a prepared split (``widedeep evaluate``) with the task's validation metrics;
  ``pointwise_metrics``: AUC, log loss, calibration, RMSE.
- ``warm_start``: initialise from an earlier checkpoint, remapping rows by vocabulary value.
- ``schedule``: stateless learning-rate schedules; ``bench``: ``widedeep bench train``.

Checkpoints are written and read by ``widedeep.model.checkpoint``. Importing this package is
cheap (no Ray / Torch imports here).
"""
