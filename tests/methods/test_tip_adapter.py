"""Tip-Adapter and Tip-Adapter-F: logit formula, validation search, training, prototypes."""

import torch
from tests.methods._helpers import one_view_task

from fewclip import functional as F
from fewclip import methods


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


def _plain_tip_f(task, epochs, lr, beta, alpha):
    """Full-batch Tip-F on a one-view task (tests.methods._helpers.one_view_task): the Tip
    logits of paper Eq. 6 on trainable keys, cross-entropy, torch's (unfused) AdamW and a
    per-iteration cosine schedule. Returns the keys after each epoch."""
    feats = task.support.views[0]
    x = feats / feats.norm(dim=1, keepdim=True)
    w = task.text_weights / task.text_weights.norm(dim=1, keepdim=True)
    y = task.support.labels
    keys = torch.nn.Parameter(x.clone())  # one view: the cache keys are the normalised features
    onehot = torch.nn.functional.one_hot(y, task.n_classes).double()
    opt = torch.optim.AdamW([keys], lr=lr, eps=1e-4, weight_decay=0.01, foreach=False)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    after = []
    for _ in range(epochs):
        logits = 100 * x @ w.T + alpha * torch.exp(-beta * (1 - x @ keys.T)) @ onehot
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        after.append(keys.detach().clone())
    return after


def test_tip_f_trains_keys_and_keeps_best_val_epoch():
    task = one_view_task(4)
    epochs, lr, beta, alpha = 8, 5e-2, 2.0, 3.0
    kw = {"epochs": epochs, "lr": lr, "beta": beta, "alpha": alpha, "batch_size": 64}
    tipf = methods.create("tip-adapter-f", search=False, dtype="float64", **kw).fit(task)
    # validation accuracy of the plain loop's keys after each epoch; the earliest best is kept
    after = _plain_tip_f(task, epochs, lr, beta, alpha)
    xv = F.l2_normalize(task.val.features)
    w = F.l2_normalize(task.text_weights)
    onehot = torch.nn.functional.one_hot(task.support.labels, task.n_classes).double()

    def val_accuracy(keys):
        logits = 100 * xv @ w.T + alpha * torch.exp(-beta * (1 - xv @ keys.T)) @ onehot
        return float((logits.argmax(1) == task.val.labels).double().mean())

    accs = [val_accuracy(k) for k in after]
    best = max(range(epochs), key=lambda e: (accs[e], -e)) + 1
    assert best == 3  # 85%, 85%, then 90% from epoch 3 to the last: neither the first nor last
    assert tipf.best_epoch_ == best
    # the kept keys are those of that epoch (the method's loss runs in float32, hence 1e-4)
    torch.testing.assert_close(tipf.keys_, after[best - 1], rtol=0, atol=1e-4)
    assert not torch.allclose(tipf.keys_, after[-1], rtol=0, atol=1e-3)
    assert not torch.allclose(tipf.keys_, F.l2_normalize(task.support.features))  # they moved
    last = methods.create("tip-adapter-f", search=False, dtype="float64", **kw)
    assert last.fit(task.without_val()).best_epoch_ == epochs
    torch.testing.assert_close(last.keys_, after[-1], rtol=0, atol=1e-4)


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
    """Full-batch Tip-F (one view, batch ≥ N) against an independent loop (``_plain_tip_f``).
    The method uses the fused AdamW kernel; the keys must agree."""
    task = one_view_task(0, val=False)
    epochs, lr, beta, alpha = 3, 1e-2, 2.0, 1.5
    m = methods.create(
        "tip-adapter-f", epochs=epochs, lr=lr, beta=beta, alpha=alpha, batch_size=64,
        dtype="float64",
    ).fit(task)  # fmt: skip
    keys = _plain_tip_f(task, epochs, lr, beta, alpha)[-1]
    assert not torch.allclose(keys, F.l2_normalize(task.support.features))  # the keys moved
    torch.testing.assert_close(m.keys_, keys, rtol=1e-9, atol=1e-9)
    assert m.best_epoch_ == epochs


def test_tip_scale_reaches_the_search_and_the_logits(task, queries):
    """A logit scale other than CLIP's 100 weighs the text term against the cache everywhere:
    in the formula and in the (β, α) search, whose pick is the first best of a brute-force
    sweep of the grid with that scale."""
    tip = methods.create("tip-adapter", scale=7.0, search_step=(6, 4)).fit(task)
    keys = F.cache_keys(task.support.views)
    w = F.l2_normalize(task.text_weights)
    onehot = torch.nn.functional.one_hot(task.support.labels, task.n_classes).float()

    def logits(x, alpha, beta):
        x = F.l2_normalize(x)
        return 7.0 * x @ w.T + alpha * torch.exp(-beta * (1 - x @ keys.T)) @ onehot

    torch.testing.assert_close(
        tip.logits(queries), logits(queries, tip.alpha_, tip.beta_), rtol=1e-5, atol=1e-4
    )
    xv, yv = task.val.features, task.val.labels
    grid = [(b, a) for b in F.reference_grid(7.0, 6) for a in F.reference_grid(3.0, 4)]
    right = [int((logits(xv, a, b).argmax(1) == yv).sum()) for b, a in grid]
    assert (tip.beta_, tip.alpha_) == grid[right.index(max(right))]
    at_100 = methods.create("tip-adapter", search_step=(6, 4)).fit(task)
    assert (at_100.beta_, at_100.alpha_) != (tip.beta_, tip.alpha_)  # the scale mattered
