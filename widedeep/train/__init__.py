"""widedeep.train: training on Ray Train (V2) and everything a run leaves behind.

- ``config``: the strict job config (``platform/jobs/*.yaml``, ``--set key=value``).
- ``tasks``: what is trained (the task protocol; ``ranking`` = Wide & Deep, ``retrieval`` plugs in).
- ``driver``: Ray Data pipeline + ``TorchTrainer`` + best-checkpoint selection (``widedeep train``).
- ``loop``: the per-worker loop (DDP for dense params, exact sparse exchange, reports, resume).
- ``checkpoint``: self-describing safetensors/JSON checkpoint directories, ``load_checkpoint``.
- ``evaluate``: scoring a prepared split (``widedeep evaluate``); ``metrics``: AUC & co.
- ``warm_start``: initialise from an earlier checkpoint, remapping rows by vocabulary value.
- ``schedule``: stateless learning-rate schedules; ``bench``: ``widedeep bench train``.

Importing this package is cheap (no Ray / Torch imports here).
"""
