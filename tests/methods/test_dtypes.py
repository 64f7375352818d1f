"""Methods fitted and evaluated in float64, float32 and float16 agree."""

import pytest
import torch
from tests.methods._helpers import (
    GDA_PROKER_LPPP_CLAP,
    TASKRES_APE_TIPX_CMLP,
)
from tests.methods._helpers import make_shuffled_task as make_task

from fewclip import methods
from fewclip.task import FeatureSet, Task


@pytest.fixture
def task64():
    return make_task(c=4, shots=3, d=8, views=3, seed=2, dtype=torch.float64)


@pytest.mark.parametrize("name", ["zero-shot", "tip-adapter", "linear-probe"])
def test_float64_and_float16(task, queries, name):
    m64 = (
        methods.create(name, dtype="float64", search=False)
        if name == "tip-adapter"
        else (methods.create(name, dtype="float64"))
    )
    assert m64.fit(task).logits(queries).dtype == torch.float64
    if name != "linear-probe":
        kw = {"search": False} if name == "tip-adapter" else {}
        m16 = methods.create(name, dtype="float16", **kw).fit(task)
        out = m16.logits(queries)
        assert out.dtype == torch.float16
        torch.testing.assert_close(out.double(), m64.logits(queries), rtol=1e-2, atol=0.5)


@pytest.mark.parametrize("name", GDA_PROKER_LPPP_CLAP)
def test_dtypes(task, queries, name):
    kw = dict(methods.get(name).quick_params)
    m64 = methods.create(name, dtype="float64", **kw).fit(task)
    assert m64.logits(queries).dtype == torch.float64
    m32 = methods.create(name, **kw).fit(task)
    torch.testing.assert_close(
        m32.logits(queries).double(), m64.logits(queries), rtol=1e-3, atol=0.05
    )
    m16 = methods.create(name, dtype="float16", **kw).fit(task)
    out = m16.logits(queries)
    assert out.dtype == torch.float16
    ref = m64.logits(queries)
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=0.02 * float(ref.abs().max()))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", TASKRES_APE_TIPX_CMLP)
def test_float16_agrees_with_float64(name, task64, queries64):
    kw = dict(methods.get(name).quick_params)
    if name in ("ape", "ape-t", "tip-x"):
        searched = methods.create(name, dtype="float64", **kw).fit(task64)
        assert searched.logits(queries64).dtype == torch.float64
        kw = {**kw, "search": False}  # the same (β, α, γ) in both precisions
    m64 = methods.create(name, dtype="float64", **kw).fit(task64)
    out64 = m64.logits(queries64)
    assert out64.dtype == torch.float64
    t32 = Task(
        task64.classnames,
        task64.text_weights.float(),
        FeatureSet(
            task64.support.features.float(), task64.support.labels, task64.support.views.float()
        ),
        FeatureSet(task64.val.features.float(), task64.val.labels),
    )
    m16 = methods.create(name, dtype="float16", **kw).fit(t32)
    out16 = m16.logits(queries64.float())
    assert out16.dtype == torch.float16
    # float16 keeps about 3 significant digits: logits of size ~80 carry errors of ~0.06
    torch.testing.assert_close(out16.double(), out64, rtol=0, atol=4e-3 * float(out64.abs().max()))
    assert torch.equal(out16.argmax(1), out64.argmax(1))
