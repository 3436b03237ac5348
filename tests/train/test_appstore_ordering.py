"""The paper's ablation on synthetic app-store data: wide & deep beats wide-only and deep-only.

The generator plants two signals (widedeep/data/generate.py): a smooth user-taste x app latent
preference (generalisation: the deep part) and specific (installed app -> companion app) pairs
that only the wide cross ``installed_x_app`` can memorise. Its oracle AUCs show each signal
matters (full logit vs. logit without the planted cross: ~0.88 vs ~0.84), so a joint model must
beat each half.
"""

import json

import pyarrow.dataset as pads
import pytest
import torch

from tests.conftest import ROOT
from tests.train.helpers import fit_in_process, make_prepared
from widedeep.data.generate import generate_appstore

COMMON = ["model.hidden=[32,16]", "optim.wide.lr=0.5", "optim.dense.lr=0.003", "seed=0"]


@pytest.fixture(scope="module")
def appstore(tmp_path_factory):
    root = tmp_path_factory.mktemp("appstore")
    meta = generate_appstore(root / "raw", 60_000, users=2000, items=200, seed=0)
    raw = pads.dataset(str(root / "raw"), format="parquet").to_table()
    return make_prepared(raw, root / "prep", ROOT / "platform" / "specs" / "appstore.yaml"), meta


def test_wide_and_deep_beats_wide_and_deep_alone(appstore):
    data, meta = appstore
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic and fast on a shared 2-core machine
    try:
        auc = {
            m: fit_in_process(data, [*COMMON, f"model.mode={m}"], epochs=3)["auc"]
            for m in ("wide", "deep", "wide_deep")
        }
    finally:
        torch.set_num_threads(threads)
    print(json.dumps({"auc": auc, "oracle": meta["oracle_auc"]}))
    assert auc["wide_deep"] > auc["deep"] + 0.004, auc
    assert auc["wide_deep"] > auc["wide"] + 0.02, auc
    assert auc["wide_deep"] < meta["oracle_auc"]["full_logit"]  # sanity: nobody beats the oracle
