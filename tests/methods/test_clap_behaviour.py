"""ZS-LP and CLAP behaviour: numerically stable penalty weights, a class without support
samples, no resize warnings from the preallocated buffers, the compute precision (float16
inputs, float16 results, float32 resolution) and a single training epoch against autograd."""

import warnings

import numpy as np
import pytest
import torch

from fewclip import methods
from fewclip.methods.clap import clap_penalty_weights
from fewclip.task import FeatureSet, Task


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def _np_lambda(views, labels, text, scale, n_classes=None):
    """λ_k written out in float64 numpy: mean over class-k views of softmax(scale·x̂·t̂ᵀ)_k,
    each row's softmax shifted by that row's own maximum (the first ``n_classes`` classes)."""
    v = views.double().numpy()
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    t = text.double().numpy()
    logits = scale * v @ t.T  # (V, N, C)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    y = labels.numpy()
    return np.array([p[:, y == k, k].mean() for k in range(n_classes or t.shape[0])])


def _hadamard_task():
    """3 classes × 4 images in 4 dims; the text weights are rows of a Hadamard matrix / 2,
    so every entry of ``init_norm·t̂`` has the same magnitude and is exact in float32."""
    h = torch.tensor([[1.0, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1]]) / 2
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(4)
    x = h[y] + 0.8 * torch.randn(12, 4, generator=g)
    return Task(["a", "b", "c"], h, FeatureSet(x, y))


def _small_task(dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    means = torch.randn(3, 8, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat_interleave(3)
    feats = 3 * (means[y] + 0.7 * torch.randn(9, 8, generator=g, dtype=torch.float64))
    views = feats + 0.3 * torch.randn(2, 9, 8, generator=g, dtype=torch.float64)
    text = _unit(means + torch.randn(3, 8, generator=g, dtype=torch.float64))
    return Task(["a", "b", "c"], text.to(dtype), FeatureSet(feats.to(dtype), y, views.to(dtype)))


# -- penalty weights ------------------------------------------------------------------------------
def test_penalty_weights_stable_for_an_image_far_from_every_class():
    """float32, default scale: an image anti-aligned with every text weight (all its logits near
    −70) next to one at +100 still gets its own finite softmax, not 0/0."""
    text = torch.eye(2, 4)
    views = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [-1.0, -1.0, 0.0, 0.0]]])  # (1, 2, 4)
    labels = torch.tensor([0, 1])
    lam = clap_penalty_weights(views, labels, text)
    assert torch.isfinite(lam).all()
    np.testing.assert_allclose(lam.numpy(), _np_lambda(views, labels, text, 100.0), rtol=1e-6)
    np.testing.assert_allclose(lam.numpy(), [1.0, 0.5], rtol=1e-6)


def test_penalty_weights_stable_for_a_large_scale():
    """With scale 1000 the rows' maxima differ by hundreds: each row is shifted by its own."""
    g = torch.Generator().manual_seed(1)
    text = _unit(torch.randn(3, 6, generator=g, dtype=torch.float64))
    views = torch.randn(2, 6, 6, generator=g, dtype=torch.float64)
    views[:, 0] = text[0]  # cosine 1 with class 0: the largest logit of all
    views[:, 1] = -text.sum(0)  # negative cosine with most classes
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    lam = clap_penalty_weights(views, labels, text, scale=1000.0)
    np.testing.assert_allclose(lam.numpy(), _np_lambda(views, labels, text, 1000.0), rtol=1e-9)


def test_penalty_weights_of_a_class_without_samples_is_nan():
    """The last class has no sample: the result still has one entry a class, NaN (a mean over
    nothing) for it and the others' own confidence."""
    g = torch.Generator().manual_seed(2)
    text = _unit(torch.randn(4, 5, generator=g, dtype=torch.float64))
    views = torch.randn(2, 6, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    lam = clap_penalty_weights(views, labels, text)
    assert lam.shape == (4,)
    assert torch.isnan(lam[3])
    expected = _np_lambda(views, labels, text, 100.0, n_classes=3)
    np.testing.assert_allclose(lam[:3].numpy(), expected, rtol=1e-9)


# -- no warnings ----------------------------------------------------------------------------------
def test_fit_and_penalty_weights_emit_no_warning():
    """The preallocated step buffers have the shapes the kernels write: no resize warning,
    with several batches an epoch and a last, shorter one."""
    task = _small_task()
    text = _unit(task.text_weights)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clap_penalty_weights(task.support.views, task.support.labels, text)
        for name in ("zs-lp", "clap"):
            methods.create(name, epochs=2, batch_size=4).fit(task)
            methods.create(name, epochs=2, batch_size=256).fit(task)


# -- compute precision ----------------------------------------------------------------------------
def test_float16_inputs_train_in_the_requested_precision():
    """A float16 task fitted in float32 is the same fit as that task cast to float32 (the cast
    is exact), for the prototypes and CLAP's penalty weights."""
    t16 = _small_task(torch.float16)
    s = t16.support
    t32 = Task(
        t16.classnames,
        t16.text_weights.float(),
        FeatureSet(s.features.float(), s.labels, s.views.float()),
    )
    for name in ("zs-lp", "clap"):
        a = methods.create(name, epochs=3, batch_size=4).fit(t16)
        b = methods.create(name, epochs=3, batch_size=4).fit(t32)
        assert a.prototypes_.dtype == torch.float32
        torch.testing.assert_close(a.prototypes_, b.prototypes_, rtol=0, atol=1e-6)
    lam_a = methods.create("clap", epochs=1).fit(t16).penalty_weights_
    lam_b = methods.create("clap", epochs=1).fit(t32).penalty_weights_
    torch.testing.assert_close(lam_a, lam_b, rtol=0, atol=1e-7)


def test_float16_results_are_float16():
    """dtype="float16": the prototypes and the penalty weights are stored in float16, equal to
    the float32 fit's up to half-precision rounding."""
    task = _small_task()
    half = methods.create("clap", epochs=3, batch_size=4, dtype="float16").fit(task)
    full = methods.create("clap", epochs=3, batch_size=4, dtype="float32").fit(task)
    assert half.prototypes_.dtype == torch.float16
    assert half.penalty_weights_.dtype == torch.float16
    torch.testing.assert_close(
        half.penalty_weights_.float(), full.penalty_weights_, rtol=1e-3, atol=1e-4
    )
    torch.testing.assert_close(half.prototypes_.float(), full.prototypes_, rtol=1e-3, atol=1e-3)


def test_float32_fit_computes_in_float32():
    """dtype is the compute precision: at init_norm 1e4 the prototypes' entries are ±5000, whose
    float32 spacing is 4.9e-4; SGD steps of at most 1.7e-4 are each rounded away in float32, so
    the float32 fit stays at its start, while float64 accumulates them (about 1e-3)."""
    task = _hadamard_task()
    kw = {"init_norm": 1e4, "lr": 0.3, "momentum": 0.0, "epochs": 30, "warmup_epochs": 0}
    start = 1e4 * task.text_weights
    one_step = methods.create("clap", dtype="float64", **{**kw, "epochs": 1}).fit(task)
    assert (one_step.prototypes_ - start.double()).abs().max() < 2.44e-4  # below half a spacing
    f64 = methods.create("clap", dtype="float64", **kw).fit(task)
    assert (f64.prototypes_ - start.double()).abs().max() > 5e-4  # more than one spacing
    f32 = methods.create("clap", dtype="float32", **kw).fit(task)
    assert torch.equal(f32.prototypes_, start)


# -- one epoch ------------------------------------------------------------------------------------
def test_one_epoch_is_one_full_batch_sgd_step():
    """epochs=1 trains: with fewer images than a batch and one view, the epoch is one step over
    every image, so w₁ = w₀ − lr·∇(CE + (1/C)·Σ λ_k‖w_k − t_k‖²) at w₀ = 10·t̂ (autograd)."""
    g = torch.Generator().manual_seed(4)
    means = torch.randn(3, 6, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat_interleave(4)
    x = means[y] + torch.randn(12, 6, generator=g, dtype=torch.float64)
    text = _unit(means + torch.randn(3, 6, generator=g, dtype=torch.float64))
    task = Task(["a", "b", "c"], text, FeatureSet(x, y))
    kw = {"epochs": 1, "warmup_epochs": 0, "lr": 0.5, "dtype": "float64"}
    lam = torch.from_numpy(_np_lambda(x[None], y, text, 100.0))
    for name in ("zs-lp", "clap"):
        m = methods.create(name, **kw).fit(task)
        anchor = 10.0 * text
        w = anchor.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(100.0 * _unit(x) @ _unit(w).T, y)
        if name == "clap":
            loss = loss + (lam * (w - anchor).pow(2).sum(1)).mean()
        loss.backward()
        expected = anchor - 0.5 * w.grad
        assert not torch.allclose(expected, anchor)
        torch.testing.assert_close(m.prototypes_, expected, rtol=1e-10, atol=1e-12)


# -- learning-rate checks -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["zs-lp", "clap"])
def test_negative_warmup_learning_rate_is_refused(name):
    with pytest.raises(ValueError, match="learning rate"):
        methods.create(name, warmup_lr=-1e-5, epochs=2).fit(_small_task())
