"""widedeep.retrieval: the first stage (candidate retrieval) and full-catalog top-K evaluation.

Modules, one job each:

- ``interactions``  user x item sets as CSR arrays; raw key -> row mapping (Arrow hash kernels)
- ``metrics``       the full-catalog ranking engine (``rank_topk``) and Recall/HR/NDCG@K
- ``baselines``     most-popular and item-kNN (cosine), scored through the same engine
- ``index``         exact top-N (chunked matmul) and HNSW (hnswlib) item indexes, save / load
- ``candidates``    the candidate policy shared by offline evaluation and the online Retriever
- ``data``          item catalog / user table / interactions from a prepared directory; tower inputs
- ``task``          ``task: retrieval`` for ``widedeep train`` (the two-tower model is
                    ``widedeep.model.two_tower``)
- ``index_build``   ``widedeep index``
- ``topk_eval``     ``widedeep evaluate --task topk`` (``run_topk``)

Importing this package imports nothing heavy.
"""
