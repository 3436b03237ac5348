"""The Triton kernels compile for a real GPU target (sm_90, Hopper) without a GPU.

The interpreter test checks the math; this one runs the real compiler pipeline (TTIR ->
TTGIR -> LLVM -> PTX -> cubin with the ptxas bundled in the triton wheel), which catches
type and lowering errors the interpreter does not see. Each variant the launchers can pick
(weight dtypes, optimizers, modes) is compiled once."""

from __future__ import annotations

import pytest

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")

FWD_SIG = {
    "W": "*fp32", "IDS": "*i64", "OFFSETS": "*i64", "PSW": "*fp32", "ELEM_OFF": "*i64", "ROW_OFF": "*i64",
    "DIMS": "*i64", "COL_OFF": "*i64", "MEAN": "*i64", "OUT": "*fp32", "KEYS": "*i64", "BAG_OF_ID": "*i64",
    "B": "i32", "out_stride": "i32",
    "HAS_PSW": "constexpr", "SAVE": "constexpr", "BLOCK_N": "constexpr", "BLOCK_D": "constexpr",
}  # fmt: skip
BWD_SIG = {
    "W": "*fp32", "M": "*fp32", "Z": "*fp32", "NACC": "*fp32", "UNIQ": "*i64", "TABLE_OF_U": "*i64",
    "SEG": "*i64", "PERM": "*i64", "BAG_OF_ID": "*i64", "OFFSETS": "*i64", "PSW": "*fp32", "G": "*fp32",
    "GRAD_OUT": "*fp32", "ELEM_OFF": "*i64", "ROW_OFF": "*i64", "DIMS": "*i64", "COL_OFF": "*i64",
    "MEAN": "*i64", "B": "i32", "g_stride": "i32", "lr": "fp32", "eps": "fp32", "l1": "fp32", "l2": "fp32",
    "beta": "fp32", "lr_power": "fp32",
    "OPT": "constexpr", "SQRT_POWER": "constexpr", "FROM_BAGS": "constexpr", "HAS_PSW": "constexpr",
    "APPLY": "constexpr", "BLOCK_N": "constexpr", "BLOCK_D": "constexpr",
}  # fmt: skip


def _compile(fn, signature, constexprs):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    compiled = triton.compile(
        ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=GPUTarget("cuda", 90, 32)
    )
    assert ".entry" in compiled.asm["ptx"]
    assert len(compiled.asm["cubin"]) > 0


@pytest.mark.parametrize(("w", "psw", "block_n", "block_d"), [("*fp32", True, 2, 16), ("*bf16", False, 32, 128)])
def test_forward_compiles_for_sm90(w, psw, block_n, block_d):
    from widedeep.kernels.triton_tbe import _tbe_forward_kernel

    sig = dict(FWD_SIG, W=w)
    _compile(_tbe_forward_kernel, sig, {"HAS_PSW": psw, "SAVE": True, "BLOCK_N": block_n, "BLOCK_D": block_d})


@pytest.mark.parametrize(
    ("w", "opt", "sqrt", "from_bags", "apply"),
    [
        ("*fp32", 0, True, True, True),  # sgd, fused
        ("*bf16", 1, True, True, True),  # rowwise adagrad, fused, half weights
        ("*fp32", 2, True, True, True),  # ftrl, fused
        ("*fp16", 2, False, True, True),  # ftrl, general lr_power
        ("*fp32", 1, True, True, False),  # coalesce-only (data parallel)
        ("*fp32", 1, True, False, True),  # apply-only from exchanged gradients
    ],
)
def test_backward_update_compiles_for_sm90(w, opt, sqrt, from_bags, apply):
    from widedeep.kernels.triton_tbe import _tbe_backward_update_kernel

    sig = dict(BWD_SIG, W=w)
    consts = {"OPT": opt, "SQRT_POWER": sqrt, "FROM_BAGS": from_bags, "HAS_PSW": True, "APPLY": apply}
    _compile(_tbe_backward_update_kernel, sig, dict(consts, BLOCK_N=32, BLOCK_D=64))
