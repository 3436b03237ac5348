"""widedeep.benchmarks: benchmarks that span several layers (``widedeep bench serve``).

Benchmarks of one layer live in that layer (``widedeep.kernels.bench``, ``widedeep.data.bench``,
``widedeep.train.bench``); the serving benchmark needs a bundle builder (``widedeep.export``) and
Serve, so it lives above both. Each prints the baseline it is compared with, measured in the same run.
"""
