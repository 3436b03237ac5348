"""``ModelSlot``: a bad bundle fails a replica's start but never a replica that is serving."""

from __future__ import annotations

import asyncio

import pytest

from tests.serve.conftest import corrupt_copy
from widedeep.errors import CheckpointError, ServingError
from widedeep.serve.deployments import ModelSlot


class FailureCount:
    """Stands in for ``ServingMetrics`` (whose Ray metric objects need a Ray worker)."""

    def __init__(self) -> None:
        self.n = 0

    def load_failed(self) -> None:
        self.n += 1


def test_failed_load_raises_at_start_and_keeps_serving_afterwards(bundles, tmp_path):
    bad = corrupt_copy(bundles[0], tmp_path / "bad")
    missing = tmp_path / "nothing-here"

    async def scenario() -> None:
        count = FailureCount()
        slot = ModelSlot(verify=True, metrics=count)
        with pytest.raises(CheckpointError, match=r"ranker\.safetensors: sha256 .* does not match"):
            await slot.load(str(bad))  # replica start: Serve must see the failure
        assert slot.current is None and count.n == 0

        v1 = await slot.load(str(bundles[0]))
        assert v1.version == "v1" and slot.last_load_error is None

        assert await slot.load(str(bad)) is v1  # serving: keep v1, record the failure
        assert slot.get() is v1 and count.n == 1
        err = slot.last_load_error
        assert err["bundle"] == str(bad) and "CheckpointError" in err["error"]
        assert str(bad / "ranker.safetensors") in err["error"] and err["at"].endswith("+00:00")
        info = slot.info()
        assert info["model_version"] == "v1" and info["last_load_error"] == err

        assert await slot.load(str(missing)) is v1
        assert count.n == 2 and slot.last_load_error["bundle"] == str(missing)
        assert "no manifest.json" in slot.last_load_error["error"]

        # a chain request retrieved on a version this replica cannot load must fail, not be
        # scored on another version's catalog
        with pytest.raises(ServingError, match=r"model v9 .* could not be loaded"):
            await slot.version("v9", str(bad))

        v2 = await slot.load(str(bundles[1]))
        assert v2.version == "v2" and slot.get() is v2 and slot.last_load_error is None
        assert slot.info()["last_load_error"] is None

    asyncio.run(scenario())
