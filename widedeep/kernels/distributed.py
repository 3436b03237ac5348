"""Exact data parallelism for the fused sparse update.

DDP cannot average the embedding gradients: there is no dense gradient to all-reduce (the
update happens inside backward). Instead every worker coalesces its batch's duplicate rows
into (row, gradient) pairs; the pairs of all workers are all-gathered (variable sizes, so the
sizes go first and each worker pads to the largest); every replica merges the union with
the same deterministic segment sum and divides by the world size (DDP's mean). All replicas
then apply the identical update to identical weights, so they stay bit-identical, and the
result equals single-process training on the union of the batches (up to float summation
order).

Cost per step: one small all-gather of sizes plus one all-gather of ``max_U * (D + 2)`` words
per worker and run; with Zipf-distributed ids ``U`` is far below the batch's id count.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from widedeep.kernels.traffic import Traffic
from widedeep.kernels.vectorized import segment_sum


def exchange_coalesced(
    rows: torch.Tensor,
    grads: torch.Tensor,
    group: dist.ProcessGroup | None = None,
    traffic: Traffic | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather every worker's coalesced ``(rows [U], grads [U, D])`` and merge them.

    Args:
        rows: int64 distinct row ids of this worker's batch.
        grads: fp32 ``[U, D]`` summed gradients of those rows.
        group: the process group (``None``: the default group).
        traffic: if given, the bytes this worker's buffers deliver to the others are added to it
            (sizes, then the padded rows and gradients: what the all-gathers really move).

    Returns:
        ``(rows, grads)`` of the union: distinct sorted rows and the gradients summed over
        workers and divided by the world size; identical on every worker.
    """
    world = dist.get_world_size(group)
    if world == 1:
        return rows, grads
    D = grads.shape[1]
    n = torch.tensor([rows.numel()], dtype=torch.int64, device=rows.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    if traffic is not None:
        traffic.add(8 * (world - 1), 8 * (world - 1), "sizes")
    counts = [int(s) for s in sizes]
    width = max(counts)
    if width == 0:
        return rows, grads
    pad_rows = rows.new_zeros(width)
    pad_rows[: rows.numel()] = rows
    pad_grads = grads.new_zeros((width, D), dtype=torch.float32)
    pad_grads[: rows.numel()] = grads
    all_rows = [torch.empty_like(pad_rows) for _ in range(world)]
    all_grads = [torch.empty_like(pad_grads) for _ in range(world)]
    dist.all_gather(all_rows, pad_rows, group=group)
    dist.all_gather(all_grads, pad_grads, group=group)
    if traffic is not None:  # this worker's rows and gradients go to every other worker, and so does the padding
        mine, others = rows.numel(), sum(counts) - rows.numel()
        traffic.add(mine * 8 * (world - 1), others * 8, "ids")
        traffic.add(mine * 4 * D * (world - 1), others * 4 * D, "gradients")
        row = 8 + 4 * D
        traffic.add((width - mine) * row * (world - 1), (width * (world - 1) - others) * row, "padding", collectives=0)
    keys = torch.cat([r[:c] for r, c in zip(all_rows, counts, strict=True)])
    values = torch.cat([g[:c] for g, c in zip(all_grads, counts, strict=True)])
    uniq, summed = segment_sum(keys, values, torch.arange(keys.numel(), device=keys.device))
    return uniq, summed.div_(world)
