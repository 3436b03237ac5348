"""widedeep.export: offline artifacts built from checkpoints for serving.

- ``bundle_writer``     write a serving bundle directory (and upload it to a URI)
- ``from_checkpoints``  ``widedeep export``: ranker + retriever checkpoints + prepared data -> a bundle
- ``item_index``        ``widedeep index``: a retriever checkpoint + an item source -> an item index
- ``synthetic``         a generated but real bundle (serving benchmark and tests)

Nothing here runs in a serving replica: ``widedeep.serve`` only reads what these write.
"""
