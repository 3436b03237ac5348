import pytest

from widedeep.train.schedule import lr_factor


def test_lr_factor_shapes():
    assert lr_factor("constant", 5, 10) == 1.0
    assert lr_factor("cosine", 0, 100) == pytest.approx(1.0)
    assert lr_factor("cosine", 50, 100) == pytest.approx(0.5)
    assert lr_factor("cosine", 100, 100, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor("linear", 25, 100) == pytest.approx(0.75)
    assert lr_factor("linear", 0, 100, warmup_steps=4) == pytest.approx(0.25)
