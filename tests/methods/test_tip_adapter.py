"""Tip-Adapter and Tip-Adapter-F: logit formula, validation search, training, prototypes."""

import torch

from fewclip import functional as F
from fewclip import methods
from fewclip.task import FeatureSet, Task


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
