"""The sparse embedding kernel: a table-batched embedding bag with the optimizer fused into backward.

Public API (documented in ``config.py`` and ``module.py``)::

    from widedeep.kernels import TableConfig, OptimizerConfig, TableBatchedEmbeddingBag, exchange_coalesced

Layers: ``config.py`` (what a table / optimizer is) -> ``layout.py`` (packing, input checks) ->
``reference.py`` (plain PyTorch, the gold standard) | ``vectorized.py`` (fast PyTorch, the CPU
default) | ``triton_tbe.py`` (CUDA kernel, imported lazily) -> ``module.py`` (the ``nn.Module``)
and ``distributed.py`` (exact data parallelism). Importing this package does not import triton.
"""

from widedeep.kernels.config import OptimizerConfig, TableConfig
from widedeep.kernels.distributed import exchange_coalesced
from widedeep.kernels.module import TableBatchedEmbeddingBag

__all__ = ["OptimizerConfig", "TableBatchedEmbeddingBag", "TableConfig", "exchange_coalesced"]
