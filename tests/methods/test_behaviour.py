"""Method semantics: equivalences between methods, reference rules, synthetic-world sanity."""

import itertools

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from fewclip import functional as F
from fewclip import methods
from fewclip.task import FeatureSet, Task
from fewclip.testing import SyntheticWorld


def test_tip_with_alpha_zero_equals_zero_shot(task, queries):
    zs = methods.create("zero-shot").fit(task)
    tip = methods.create("tip-adapter", alpha=0.0, search=False).fit(task)
    torch.testing.assert_close(tip.logits(queries), zs.logits(queries))


def test_tip_logits_follow_the_formula(task, queries):
    tip = methods.create("tip-adapter", alpha=1.3, beta=4.0, search=False).fit(task)
    keys = F.cache_keys(task.support.views)
    w = F.l2_normalize(task.text_weights)
    x = F.l2_normalize(queries)
    onehot = torch.nn.functional.one_hot(task.support.labels, task.n_classes).float()
    expected = 100 * x @ w.T + 1.3 * torch.exp(-4.0 * (1 - x @ keys.T)) @ onehot
    torch.testing.assert_close(tip.logits(queries), expected, rtol=1e-5, atol=1e-4)


def test_tip_search_uses_validation_only(task):
    tip = methods.create("tip-adapter", search_step=(20, 10)).fit(task)
    x = F.l2_normalize(task.val.features)
    expected = F.search_tip(
        x, task.val.labels, tip.keys_, tip.key_labels_, tip.text_weights_, search_step=(20, 10)
    )
    assert (tip.beta_, tip.alpha_, tip.val_accuracy_) == expected
    no_val = methods.create("tip-adapter", alpha=0.7, beta=2.0).fit(task.without_val())
    assert (no_val.alpha_, no_val.beta_, no_val.val_accuracy_) == (0.7, 2.0, None)


def test_tip_f_with_zero_epochs_equals_tip(task, queries):
    tip = methods.create("tip-adapter", search_step=(20, 10)).fit(task)
    tipf = methods.create("tip-adapter-f", epochs=0, search_step=(20, 10)).fit(task)
    assert torch.equal(tipf.logits(queries), tip.logits(queries))
    assert (tipf.alpha_, tipf.beta_) == (tip.alpha_, tip.beta_)


def test_tip_f_trains_keys_and_keeps_best_val_epoch(task):
    tipf = methods.create("tip-adapter-f", epochs=5, search=False).fit(task)
    init = F.cache_keys(task.support.views)
    assert 1 <= tipf.best_epoch_ <= 5
    assert not torch.allclose(tipf.keys_, init[torch.argsort(task.support.labels, stable=True)])
    last = methods.create("tip-adapter-f", epochs=5, search=False).fit(task.without_val())
    assert last.best_epoch_ == 5


def test_tip_f_is_deterministic(task, queries):
    a = methods.create("tip-adapter-f", epochs=3, search=False, seed=3).fit(task)
    b = methods.create("tip-adapter-f", epochs=3, search=False, seed=3).fit(task)
    assert torch.equal(a.logits(queries), b.logits(queries))


def test_prototypes(task, queries):
    full = methods.create("tip-adapter", search=False).fit(task)
    same = methods.create("tip-adapter", search=False, prototypes=4).fit(task)
    torch.testing.assert_close(same.logits(queries), full.logits(queries))
    one = methods.create("tip-adapter", search=False, prototypes=1).fit(task)
    assert one.keys_.shape == (task.n_classes, task.dim)
    keys = F.cache_keys(task.support.views)
    for c in range(task.n_classes):
        mean = keys[task.support.labels == c].mean(0)
        torch.testing.assert_close(one.keys_[c], mean / mean.norm())
    two = methods.create("tip-adapter", search=False, prototypes=2).fit(task)
    assert two.key_labels_.tolist() == [c for c in range(task.n_classes) for _ in range(2)]


@pytest.mark.parametrize("branch", ["visual", "both"])
def test_clip_adapter_ratio_zero_equals_zero_shot(task, queries, branch):
    zs = methods.create("zero-shot").fit(task)
    ca = methods.create("clip-adapter", ratio=0.0, text_ratio=0.0, branch=branch, epochs=3).fit(
        task
    )
    torch.testing.assert_close(ca.logits(queries), zs.logits(queries))


def test_clip_adapter_residual_formula(task, queries):
    ca = methods.create("clip-adapter", ratio=0.3, epochs=2, reduction=2).fit(task)
    a = ca.modules_["visual"].fc
    assert a[0].weight.shape == (8, 16) and a[0].bias is None and a[2].bias is None
    f = queries
    adapted = torch.relu(torch.relu(f @ a[0].weight.T) @ a[2].weight.T)
    blended = 0.3 * adapted + 0.7 * f
    w = F.l2_normalize(task.text_weights)
    expected = 100 * F.l2_normalize(blended) @ w.T
    torch.testing.assert_close(ca.logits(queries), expected, rtol=1e-5, atol=1e-4)


def test_clip_adapter_variants(task, queries, tmp_path):
    text = methods.create("clip-adapter", branch="text", epochs=3).fit(task)
    assert set(text.modules_.keys()) == {"text"}
    learned = methods.create("clip-adapter", branch="both", learn_ratio=True, epochs=3).fit(task)
    assert set(learned.modules_.keys()) == {"visual", "text", "ratio"}
    assert 0 < learned.ratio_ < 1 and 0 < learned.text_ratio_ < 1
    learned.save(tmp_path / "l")
    assert torch.equal(methods.load(tmp_path / "l").logits(queries), learned.logits(queries))
    untrained = methods.create("clip-adapter", learn_ratio=True, epochs=0, ratio=0.6).fit(task)
    assert untrained.ratio_ == pytest.approx(0.6, abs=1e-4)


@pytest.mark.parametrize("ratio", [0.2, 0.6, 0.0])
def test_clip_adapter_hand_written_backward_matches_autograd(task, queries, ratio):
    """The fast visual-branch trainer follows the same SGD path as autograd + torch.optim."""
    params = dict(ratio=ratio, epochs=4, reduction=2, batch_size=8, dtype="float64")
    fast = methods.create("clip-adapter", **params).fit(task)
    slow = methods.create("clip-adapter", **params)
    slow._train = slow._train_autograd  # type: ignore[method-assign]
    slow.fit(task)
    start = methods.create("clip-adapter", **{**params, "epochs": 0}).fit(task)
    params_of = [list(m.modules_.parameters()) for m in (fast, slow, start)]
    for a, b, a0 in zip(*params_of, strict=True):
        # the autograd path computes its loss on float32 logits, hence not 1e-12
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
        # weight decay moves the weights even when ratio 0 cuts the loss off from the adapter
        assert (a - a0).abs().max() > 1e-6
    torch.testing.assert_close(fast.logits(queries), slow.logits(queries))


def test_clip_adapter_lr_schedule():
    ca = methods.create("clip-adapter", epochs=200)
    assert ca._lr_at(0) == 1e-5
    assert ca._lr_at(1) == pytest.approx(2e-3)  # Dassl's warm-up recount
    assert ca._lr_at(2) == pytest.approx(0.5 * 2e-3 * (1 + np.cos(np.pi / 200)))
    assert ca._lr_at(199) == pytest.approx(0.5 * 2e-3 * (1 + np.cos(np.pi * 198 / 200)))


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


@pytest.mark.parametrize("C", [0.5, 10.0, 200.0])
def test_linear_probe_matches_sklearn(C):
    world = SyntheticWorld(10, 64, seed=3, test_size=1000)
    task = world.task(8, seed=1, views=1, val="none")
    test = world.test_set()
    lp = methods.create("linear-probe", C=C).fit(task)
    x = F.l2_normalize(task.support.features).double().numpy()
    sk = LogisticRegression(C=C, max_iter=5000, tol=1e-8).fit(x, task.support.labels.numpy())
    xt = F.l2_normalize(test.features).double().numpy()
    sk_acc = float((sk.predict(xt) == test.labels.numpy()).mean())
    ours = lp.score(test.features, test.labels)
    assert abs(ours - sk_acc) <= 0.005
    np.testing.assert_allclose(
        lp.coef_.double().numpy(), sk.coef_, atol=0.05 * np.abs(sk.coef_).max()
    )


def test_linear_probe_sweeps_on_validation():
    world = SyntheticWorld(8, 32, seed=1)
    task = world.task(4, seed=2)
    lp = methods.create("linear-probe", Cs=(0.01, 1.0, 100.0)).fit(task)
    assert lp.C_ in (0.01, 1.0, 100.0) and lp.val_accuracy_ is not None
    assert methods.create("linear-probe").fit(task.without_val()).C_ == 10.0


def _curves(world, names, shots_list, seeds):
    test = world.test_set()
    acc = {n: [] for n in names}
    for shots in shots_list:
        for n in names:
            per_seed = []
            for seed in seeds:
                kw = {"epochs": 20, "search_step": (50, 10)} if n == "tip-adapter-f" else {}
                if n == "tip-adapter":
                    kw = {"search_step": (50, 10)}
                m = methods.create(n, **kw).fit(world.task(shots, seed=seed, views=4, val="full"))
                per_seed.append(m.score(test.features, test.labels))
            acc[n].append(sum(per_seed) / len(per_seed))
    return acc


def test_synthetic_world_cache_methods_beat_zero_shot_and_grow_with_shots():
    world = SyntheticWorld(20, 128, seed=0, gap=0.8, sep=0.2, spread=0.05, test_size=2000)
    world.calibrate(0.5)
    zs = world.zero_shot_accuracy()
    acc = _curves(world, ["tip-adapter", "tip-adapter-f"], [1, 2, 4, 8, 16], [1, 2, 3])
    for name, curve in acc.items():
        assert curve[-1] > zs + 0.05, (name, curve, zs)
        assert all(b >= a - 0.005 for a, b in itertools.pairwise(curve)), (name, curve)


def test_tip_adapter_f_steps_equal_a_plain_adamw_loop():
    """Full-batch Tip-F (one view, batch ≥ N) against an independent loop: the Tip logits of
    paper Eq. 6 on trainable keys, cross-entropy, torch's (unfused) AdamW and a per-iteration
    cosine schedule. The method uses the fused AdamW kernel; the keys must agree."""
    g = torch.Generator().manual_seed(0)
    means = torch.randn(5, 16, generator=g, dtype=torch.float64)
    labels = torch.arange(5).repeat_interleave(4)
    feats = 3 * (means[labels] + 0.7 * torch.randn(20, 16, generator=g, dtype=torch.float64))
    text = means + torch.randn(5, 16, generator=g, dtype=torch.float64)
    task = Task([f"c{i}" for i in range(5)], text, FeatureSet(feats, labels, feats[None]))
    epochs, lr, beta, alpha = 3, 1e-2, 2.0, 1.5
    m = methods.create(
        "tip-adapter-f", epochs=epochs, lr=lr, beta=beta, alpha=alpha, batch_size=64,
        dtype="float64",
    ).fit(task)  # fmt: skip
    feats = task.support.views[0]
    x = feats / feats.norm(dim=1, keepdim=True)
    w = task.text_weights / task.text_weights.norm(dim=1, keepdim=True)
    y = task.support.labels
    keys = torch.nn.Parameter(x.clone())  # one view: the cache keys are the normalised features
    onehot = torch.nn.functional.one_hot(y, task.n_classes).double()
    opt = torch.optim.AdamW([keys], lr=lr, eps=1e-4, weight_decay=0.01, foreach=False)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    for _ in range(epochs):
        logits = 100 * x @ w.T + alpha * torch.exp(-beta * (1 - x @ keys.T)) @ onehot
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    assert not torch.allclose(keys.detach(), x)  # the keys moved
    torch.testing.assert_close(m.keys_, keys.detach(), rtol=1e-9, atol=1e-9)
    assert m.best_epoch_ == epochs
