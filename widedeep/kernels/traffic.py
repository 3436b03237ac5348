"""Bytes a worker exchanges with the other workers, counted at the collective call sites.

Why count instead of estimate: the replicated exchange pads every worker's coalesced rows to
the largest worker's count and the row-wise exchange moves ids, embeddings and gradients of
different sizes; a benchmark comparing the two must add up exactly what each passes to
``torch.distributed``. The convention for every collective is the payload that leaves this
worker for another worker (``sent``) and arrives from another worker (``received``): a worker's
own slice of an all-to-all and its own copy in an all-gather are not traffic. How a backend
routes the payload (ring, tree, NVLink) is not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Traffic:
    """Running totals for one worker (a plain counter: not shared between workers)."""

    sent: int = 0
    received: int = 0
    collectives: int = 0
    sent_by_kind: dict[str, int] = field(default_factory=dict)  # "ids", "embeddings", "gradients", ...

    def add(self, sent: int, received: int, kind: str = "other", collectives: int = 1) -> None:
        self.sent += int(sent)
        self.received += int(received)
        self.collectives += collectives
        self.sent_by_kind[kind] = self.sent_by_kind.get(kind, 0) + int(sent)

    def reset(self) -> None:
        self.sent = self.received = self.collectives = 0
        self.sent_by_kind = {}
