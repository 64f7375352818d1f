"""CLIP-Adapter behaviour: bottleneck and hypernetwork widths, boundary and learned residual
ratios, the text branch's blend, one epoch against autograd, zero epochs, float16 training."""

import pytest
import torch
from tests.methods._helpers import make_clustered_task

from fewclip import methods
from fewclip.methods.clip_adapter import Adapter


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def _adapt(adapter, x):
    """ReLU(W₂·ReLU(W₁·x)) from the adapter's two bias-free weights."""
    fc = adapter.fc
    return torch.relu(torch.relu(x @ fc[0].weight.T) @ fc[2].weight.T)


def _ratio_net(net, text):
    """σ(W₂·ReLU(W₁·mean(T) + b₁) + b₂) from the hypernetwork's weights: (ρ, ρ_t)."""
    h = torch.relu(net.hidden.weight @ text.mean(0) + net.hidden.bias)
    return torch.sigmoid(net.out.weight @ h + net.out.bias)


def _expected_logits(m, x, rho, rho_t):
    """scale·normalise(f')·normalise(W')ᵀ with f' = ρ·A_v(x) + (1 − ρ)·x and
    W' = ρ_t·A_t(W) + (1 − ρ_t)·W, each blend only where its adapter exists."""
    w = m.text_weights_
    f = x
    with torch.no_grad():
        if "visual" in m.modules_:
            f = rho * _adapt(m.modules_["visual"], x) + (1 - rho) * x
        if "text" in m.modules_:
            w = rho_t * _adapt(m.modules_["text"], w) + (1 - rho_t) * w
    return 100.0 * _unit(f) @ _unit(w).T


@pytest.fixture
def queries():
    return torch.randn(6, 16, generator=torch.Generator().manual_seed(7)) * 3


# -- module shapes --------------------------------------------------------------------------------
def test_reduction_above_the_dimension_leaves_a_one_unit_bottleneck(task, queries):
    adapter = Adapter(8, 16)
    assert adapter.fc[0].weight.shape == (1, 8)
    assert adapter.fc[2].weight.shape == (8, 1)
    m = methods.create("clip-adapter", reduction=32, epochs=1).fit(task)
    fc = m.modules_["visual"].fc
    assert fc[0].weight.shape == (1, 16)
    assert fc[2].weight.shape == (16, 1)
    torch.testing.assert_close(m.logits(queries), _expected_logits(m, queries, 0.2, 0.2))


@pytest.mark.parametrize(("dim", "hidden"), [(16, 8), (256, 16)])
def test_ratio_network_is_one_sixteenth_of_the_dimension_and_at_least_8(dim, hidden):
    task = make_clustered_task(c=2, shots=1, d=dim, views=1, val=False)
    m = methods.create("clip-adapter", learn_ratio=True, epochs=0).fit(task)
    net = m.modules_["ratio"]
    assert net.hidden.weight.shape == (hidden, dim)
    assert net.out.weight.shape == (2, hidden)


# -- residual ratios ------------------------------------------------------------------------------
def test_boundary_ratios_start_the_ratio_network_just_inside_0_and_1(task, queries):
    """learn_ratio with ratio 0 and text_ratio 1: the initial ratios are clamped to 1e-4 and
    1 − 1e-4, so every hypernetwork parameter is finite (a bias of ±inf could never learn)."""
    m = methods.create(
        "clip-adapter", branch="both", learn_ratio=True, ratio=0.0, text_ratio=1.0, epochs=0
    ).fit(task)
    assert m.ratio_ == pytest.approx(1e-4, rel=1e-5)
    assert m.text_ratio_ == pytest.approx(1 - 1e-4, abs=1e-6)
    assert all(bool(torch.isfinite(p).all()) for p in m.modules_["ratio"].parameters())
    expected = _expected_logits(m, queries, 1e-4, 1 - 1e-4)
    torch.testing.assert_close(m.logits(queries), expected, rtol=1e-5, atol=1e-4)


def test_learned_ratios_are_the_ratio_networks_output(task, queries):
    """After training with learn_ratio, ratio_ and text_ratio_ are what the trained
    hypernetwork predicts from the text weights (no longer the initial 0.2), and the logits
    blend with them."""
    m = methods.create(
        "clip-adapter", branch="both", learn_ratio=True, lr=0.5, epochs=5, batch_size=8
    ).fit(task)
    with torch.no_grad():
        rho, rho_t = _ratio_net(m.modules_["ratio"], m.text_weights_)
    assert abs(m.ratio_ - 0.2) > 1e-3
    assert abs(m.text_ratio_ - 0.2) > 1e-3
    assert m.ratio_ == pytest.approx(float(rho), abs=1e-6)
    assert m.text_ratio_ == pytest.approx(float(rho_t), abs=1e-6)
    expected = _expected_logits(m, queries, rho, rho_t)
    torch.testing.assert_close(m.logits(queries), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("text_ratio", [0.3, 0.7])
def test_text_branch_blends_the_adapted_text_weights(task, queries, text_ratio):
    """branch="text": W' = ρ_t·A_t(W) + (1 − ρ_t)·W, the raw query features unadapted."""
    m = methods.create("clip-adapter", branch="text", text_ratio=text_ratio, epochs=2).fit(task)
    assert set(m.modules_.keys()) == {"text"}
    expected = _expected_logits(m, queries, 0.2, text_ratio)
    torch.testing.assert_close(m.logits(queries), expected, rtol=1e-5, atol=1e-4)


# -- training -------------------------------------------------------------------------------------
def test_one_epoch_is_one_full_batch_sgd_step():
    """epochs=1 trains: with one view and fewer images than a batch, the epoch is one step over
    every image; at lr η (no warm-up) W ← W − η·(∇CE + wd·W), the gradient from autograd."""
    task = make_clustered_task(c=3, shots=3, d=16, views=1, val=False, dtype=torch.float64)
    kw = {"epochs": 1, "warmup_epochs": 0, "lr": 0.5, "batch_size": 32, "dtype": "float64"}
    m = methods.create("clip-adapter", ratio=0.4, **kw).fit(task)
    start = methods.create("clip-adapter", ratio=0.4, **{**kw, "epochs": 0}).fit(task)
    w1, w2 = (p.detach().clone().requires_grad_(True) for p in start.modules_.parameters())
    x, y = task.support.views[0], task.support.labels
    a = torch.relu(torch.relu(x @ w1.T) @ w2.T)
    f = 0.4 * a + 0.6 * x
    logits = 100.0 * _unit(f) @ _unit(task.text_weights).T
    torch.nn.functional.cross_entropy(logits, y).backward()
    for trained, w in zip(m.modules_.parameters(), (w1, w2), strict=True):
        expected = w.detach() - 0.5 * (w.grad + 5e-4 * w.detach())
        assert (expected - w.detach()).abs().max() > 1e-5
        torch.testing.assert_close(trained.detach(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("branch", ["visual", "text", "both"])
def test_zero_epochs_need_no_learning_rate_schedule(task, queries, branch):
    """epochs=0 keeps the initial adapters and never evaluates the schedule, so no warm-up
    (whose cosine would divide by the 0 epochs) is needed."""
    kw = {"branch": branch, "learn_ratio": branch == "both", "epochs": 0}
    bare = methods.create("clip-adapter", warmup_epochs=0, **kw).fit(task)
    default = methods.create("clip-adapter", **kw).fit(task)
    assert torch.equal(bare.logits(queries), default.logits(queries))


def test_float16_trains_in_float32():
    """dtype="float16" on the visual branch trains in float32 and stores float16: many small
    steps give the float32 fit's weights to within a few half-precision spacings (training in
    float16 itself drifts by 10× more)."""
    task = make_clustered_task(c=3, shots=4, d=16, views=2, val=False)
    kw = {"epochs": 30, "lr": 2e-4, "batch_size": 2, "weight_decay": 0.0}
    half = methods.create("clip-adapter", dtype="float16", **kw).fit(task)
    full = methods.create("clip-adapter", dtype="float32", **kw).fit(task)
    for a, b in zip(half.modules_.parameters(), full.modules_.parameters(), strict=True):
        assert a.dtype == torch.float16
        assert (a.float() - b).abs().max() < 1e-3


# -- learning-rate checks -------------------------------------------------------------------------
@pytest.mark.parametrize("branch", ["text", "both"])
def test_negative_first_learning_rate_is_refused_on_the_autograd_branches(task, branch):
    """The text and both branches hand the first epoch's rate (the warm-up rate) to the
    optimiser, which refuses a negative one before any step."""
    m = methods.create("clip-adapter", branch=branch, warmup_lr=-1e-5, epochs=1)
    with pytest.raises(ValueError, match="learning rate"):
        m.fit(task)


@pytest.mark.parametrize(
    "params",
    [
        {"branch": "visual", "warmup_lr": -1e-5},
        {"branch": "visual", "lr": -2e-3},
        {"branch": "text", "lr": -2e-3},
    ],
)
def test_negative_learning_rates_are_refused_on_every_branch(task, params):
    with pytest.raises(ValueError, match="learning rate"):
        methods.create("clip-adapter", epochs=2, **params).fit(task)
