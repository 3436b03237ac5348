"""widedeep.retrain: continuous training, the production loop of the paper.

A new window of raw data is prepared with the serving FeatureSpace extended
(``widedeep.features.extend``), the ranker and the retriever are warm-started from the serving
model and trained on it, and the candidate is verified against the serving model
(``verify``: quality on the window's held-out slice and on the serving model's own held-out
slice, calibration, finite and spread-out predictions, top-K, data checks) before it is exported
and swapped into the live Serve application in place (``swap``: a ``user_config`` change, so
``reconfigure`` loads it while the old model keeps answering). A refused window stops with a
report naming every failed check; serving keeps the old model.
"""
