"""widedeep.retrieval: the library the offline evaluation and the online Retriever share.

Modules, one job each:

- ``interactions``  user x item sets as CSR arrays; raw key -> row mapping; what a positive row is
- ``popularity``    the one definition of item popularity (positive train rows)
- ``topk``          the full-catalog ranking engine (``rank_topk``) and Recall/HR/NDCG@K
- ``index``         exact top-N (chunked matmul) and HNSW (voyager) item indexes, save / load
- ``candidates``    the candidate policy and the final re-ranked order (``final_scores``)
- ``data``          item catalog / user table / interactions from a prepared directory; tower inputs
- ``history``       users' histories as a user-tower input

Training the retriever is ``widedeep.train.retrieval_task``; its model ``widedeep.model.two_tower``;
``widedeep evaluate --task topk`` is ``widedeep.evaluation.topk``; ``widedeep index``
``widedeep.export.item_index``. Importing this package imports nothing heavy.
"""
