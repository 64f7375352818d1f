"""`fewclip bench` under domain-generalisation: ImageNet → its variants, on synthetic worlds and
on a tiny fake $DATA tree read by the real readers; the -A/-R class mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fewclip.bench import BenchConfig, Prepared, format_tables, load_config, run_bench, summarize
from fewclip.bench.generalise import domain_index
from fewclip.bench.synthetic import SyntheticVariant, synthetic_prepare
from fewclip.errors import InvalidValueError
from fewclip.functional import l2_normalize

from .conftest import FAST, PROMPT_LEARNERS, PROMPT_QUICK, SHAPES

VARIANTS = {
    "alpha_v2": SyntheticVariant("alpha", 40, None, 0.5),  # all 5 classes, mild shift
    "alpha_a": SyntheticVariant("alpha", 30, 3, 2.0),  # 3 of the 5 classes, strong shift
}


def _config(**kw):
    base = {
        "methods": ("zero-shot", "tip-adapter", "linear-probe", "coop"),
        "datasets": ("alpha",),
        "shots": (2,),
        "seeds": (1, 2),
        "backbones": ("toy",),
        "protocol": "domain-generalisation",
        "protocol_options": {"targets": ["alpha_v2", "alpha_a"]},
        "params": {**FAST, "coop": {"epochs": 2, "n_ctx": 4}},
    }
    base.update(kw)
    return BenchConfig(**base)


@pytest.fixture(scope="module")
def prepare():
    return synthetic_prepare(
        shapes=SHAPES, calibrate=False, n_views=3, text_tower=True, variants=VARIANTS
    )


@pytest.fixture(scope="module")
def run(prepare, tmp_path_factory):
    """The rows, and every fitted model by (method, seed)."""
    from fewclip.methods.base import Method

    models: dict[tuple[str, int], Method] = {}
    original = Method.fit
    mp = pytest.MonkeyPatch()

    def fit(self, task):
        models[(self.name, task.meta["seed"])] = self
        return original(self, task)

    mp.setattr(Method, "fit", fit)
    try:
        rows = run_bench(_config(), prepare, tmp_path_factory.mktemp("dg") / "r.jsonl", quiet=True)
    finally:
        mp.undo()
    return rows, models


def test_every_method_applies_on_every_target(run) -> None:
    rows, _ = run
    assert len(rows) == 8
    for r in rows:
        assert r["protocol"] == "domain-generalisation"
        assert r["validation"] == "fewshot-val"
        assert r["not_applicable"] is None
        assert list(r["targets"]) == ["alpha_v2", "alpha_a"]
        v2, a = r["targets"]["alpha_v2"], r["targets"]["alpha_a"]
        assert isinstance(v2["accuracy"], float)
        assert isinstance(a["accuracy"], float)  # the cache method too: same classes
        assert (v2["n"], v2["classes"]) == (40, 5)
        assert "class_subset" not in v2
        assert (a["n"], a["classes"], a["class_subset"]) == (30, 3, 3)
        assert r["n_test"] == 60  # the source's own test set
        assert r["target_average"] == pytest.approx((v2["accuracy"] + a["accuracy"]) / 2)


def test_the_four_prompt_learners_score_every_target(prepare, tmp_path) -> None:
    rows = run_bench(
        _config(methods=PROMPT_LEARNERS, seeds=(1,), params=PROMPT_QUICK),
        prepare,
        tmp_path / "r.jsonl",
        quiet=True,
    )
    assert [r["method"] for r in rows] == list(PROMPT_LEARNERS)
    for r in rows:
        assert r["not_applicable"] is None, r["method"]
        v2, a = r["targets"]["alpha_v2"], r["targets"]["alpha_a"]
        assert (v2["n"], a["n"], a["class_subset"]) == (40, 30, 3)
        assert r["target_average"] == pytest.approx((v2["accuracy"] + a["accuracy"]) / 2)


def test_the_subset_is_scored_with_the_source_columns(run, prepare) -> None:
    """-A's accuracy is the argmax over the fitted 5-way classifier's columns of the 3 classes
    it keeps (0, 1, 3: evenly spaced), for a cache method as for zero-shot."""
    rows, models = run
    target = prepare("alpha_a", "toy")
    assert list(target.class_index or ()) == [0, 1, 3]
    test = target.source.features("test")
    source = prepare("alpha", "toy")
    for method in ("zero-shot", "tip-adapter"):
        model = models[(method, 1)]
        pred = model.logits(test.features)[:, [0, 1, 3]].argmax(1)
        want = 100 * float((pred == test.labels).float().mean())
        (row,) = [r for r in rows if r["method"] == method and r["seed"] == 1]
        assert row["targets"]["alpha_a"]["accuracy"] == pytest.approx(want, abs=1e-4)
    # zero-shot by hand: the 3 classes' text weights, as the reference's 200-way head
    x = l2_normalize(test.features)
    pred = (x @ source.text_weights[[0, 1, 3]].T).argmax(1)
    (zs,) = [r for r in rows if r["method"] == "zero-shot" and r["seed"] == 1]
    assert zs["targets"]["alpha_a"]["accuracy"] == pytest.approx(
        100 * float((pred == test.labels).float().mean()), abs=1e-4
    )


def test_tables_and_resume(run, prepare, tmp_path, fit_counter) -> None:
    rows, _ = run
    summary = summarize(rows, methods=_config().methods)
    (group,) = summary.generalisation
    (table,) = group.tables
    assert table.columns == ["alpha", "alpha_v2", "alpha_a", "average"]
    assert all(c.stat is not None for per in table.cells.values() for c in per.values())
    text = format_tables(summary)
    assert "protocol domain-generalisation (validation fewshot-val)" in text
    assert "n/a" not in text
    assert "restricted to the target's classes" in text
    out = tmp_path / "r.jsonl"
    cfg = _config(methods=("zero-shot",), seeds=(1,))
    run_bench(cfg, prepare, out, quiet=True)
    run_bench(cfg, prepare, out, quiet=True)
    assert len(fit_counter.calls) == 1  # resumed: the cell ran once
    other = _config(methods=("zero-shot",), seeds=(1,), protocol_options={"targets": ["alpha_a"]})
    run_bench(other, prepare, out, quiet=True)
    assert len(fit_counter.calls) == 2  # other targets: another cell


def _prepared(names, class_ids=None, class_index=None):
    return Prepared(
        source=None,  # type: ignore[arg-type]
        classnames=names,
        text_weights=torch.zeros(len(names), 2),
        class_ids=class_ids,
        class_index=class_index,
    )


def test_domain_index_follows_the_shared_class_ids() -> None:
    names = ["tench", "goldfish", "missile", "missile"]  # ImageNet repeats "missile"
    source = _prepared(names, class_ids=[0, 1, 657, 744])
    assert domain_index(source, _prepared(names, class_ids=[0, 1, 657, 744]), "v2") is None
    sub = _prepared(["missile", "tench"], class_ids=[744, 0])
    assert domain_index(source, sub, "a") == [3, 0]
    with pytest.raises(InvalidValueError, match=r"ids \[5\]\) are not among the source's"):
        domain_index(source, _prepared(["tench", "x"], class_ids=[0, 5]), "a")
    with pytest.raises(InvalidValueError, match="differ from the source classes"):
        domain_index(source, _prepared(["goldfish"], class_ids=[0]), "a")
    # without shared ids: the target's class_index, or every class in order
    assert domain_index(_prepared(names), _prepared(["missile"], class_index=[2]), "r") == [2]
    assert domain_index(_prepared(names), _prepared(names), "sketch") is None
    with pytest.raises(InvalidValueError, match="no class_index"):
        domain_index(_prepared(names), _prepared(names[:2]), "sketch")


def test_preset_reproduces_the_domain_generalisation_table() -> None:
    cfg = load_config("coop-domain-generalisation")
    assert cfg.protocol == "domain-generalisation"
    assert cfg.datasets == ("imagenet",)
    assert cfg.protocol_options["targets"] == [
        "imagenet_v2",
        "imagenet_sketch",
        "imagenet_a",
        "imagenet_r",
    ]
    assert (cfg.shots, cfg.backbones) == ((16,), ("ViT-B/16",))
    assert "tip-adapter" in cfg.methods  # every method applies: the same classes
    assert set(PROMPT_LEARNERS) <= set(cfg.methods)
    assert cfg.method_params("prograd", "imagenet") == {"epochs": 50}
    assert load_config(None, ["protocol=domain-generalisation"]).protocol_options["targets"] == [
        "imagenet_v2",
        "imagenet_sketch",
        "imagenet_a",
        "imagenet_r",
    ]


def test_the_papers_rows_under_an_imagenet_source() -> None:
    rows = [
        {
            "hash": f"dg{seed}",
            "method": "zero-shot",
            "dataset": "imagenet",
            "backbone": "ViT-B/16",
            "shots": 16,
            "seed": seed,
            "protocol": "domain-generalisation",
            "validation": "fewshot-val",
            "accuracy": 66.0,
            "targets": {t: {"accuracy": 50.0} for t in ("imagenet_v2", "imagenet_a")},
            "target_average": 50.0,
        }
        for seed in (1, 2)
    ]
    text = format_tables(summarize(rows))
    line = next(ln for ln in text.splitlines() if ln.startswith("CLIP (CoCoOp T3, unchecked)"))
    assert line.split()[-3:] == ["60.83", "47.77", "–"]  # -V2, -A; no paper average here
    assert "NOT checked against the paper here" in text


# -- the real readers: a tiny fake $DATA tree, the tiny backbone -----------------------------------
def _fake_imagenet_family(root: Path) -> dict[str, list[str]]:
    """ImageNet with 3 classes (two of them ImageNet-A classes), ImageNet-A with those two, and
    ImageNet-Sketch with 2 of the 3; drawn shapes, one kind per class."""
    from fewclip.data import IMAGENET_A_WNIDS, IMAGENET_WNIDS
    from fewclip.testing.images import draw_shape_image

    a = [IMAGENET_A_WNIDS[0], IMAGENET_A_WNIDS[5]]
    other = next(w for w in IMAGENET_WNIDS if w not in IMAGENET_A_WNIDS)
    wnids = sorted([*a, other])
    look = dict(zip(wnids, ("red_circle", "blue_square", "green_triangle"), strict=True))
    rng = np.random.default_rng(0)

    def write(folder: Path, wnid: str, n: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            draw_shape_image(look[wnid], rng, size=32).save(folder / f"{i}.png")

    for w in wnids:
        write(root / "imagenet" / "images" / "train" / w, w, 4)
        write(root / "imagenet" / "images" / "val" / w, w, 2)
    for w in a:
        write(root / "imagenet-adversarial" / "imagenet-a" / w, w, 2)
    for w in wnids[1:]:
        write(root / "imagenet-sketch" / "images" / w, w, 2)
    return {"imagenet": wnids, "a": a}


def test_imagenet_to_its_variants_through_the_readers(tmp_path) -> None:
    import fewclip.backbones as fb
    from fewclip.data import IMAGENET_WNIDS
    from fewclip.prepare import dataset_prepare

    root = tmp_path / "DATA"
    wnids = _fake_imagenet_family(root)
    bb = fb.load("fewclip-tiny-vit")
    prepare = dataset_prepare(
        root=root, store=tmp_path / "store", views=1, load_backbone=lambda _n: bb, progress=False
    )
    source = prepare("imagenet", bb.name)
    assert list(source.class_ids or ()) == [IMAGENET_WNIDS.index(w) for w in wnids["imagenet"]]
    cfg = BenchConfig(
        methods=("zero-shot", "tip-adapter"),
        datasets=("imagenet",),
        backbones=(bb.name,),
        shots=(1,),
        seeds=(1,),
        views=1,
        protocol="domain-generalisation",
        protocol_options={"targets": ["imagenet_a", "imagenet_sketch"]},
        params=FAST,
    )
    rows = run_bench(cfg, prepare, tmp_path / "r.jsonl", quiet=True)
    for r in rows:
        a, sketch = r["targets"]["imagenet_a"], r["targets"]["imagenet_sketch"]
        # -A: its 2 classes are ImageNet classes 0 and 1 of the 3 (the sorted wnids)
        assert (a["classes"], a["class_subset"], a["n"]) == (2, 2, 4)
        assert (sketch["classes"], sketch["class_subset"], sketch["n"]) == (2, 2, 4)
        assert isinstance(a["accuracy"], float)
    a_target = prepare("imagenet_a", bb.name)
    assert domain_index(source, a_target, "imagenet_a") == [
        wnids["imagenet"].index(w) for w in wnids["a"]
    ]


def test_targets_reach_forked_workers(run, prepare, tmp_path) -> None:
    rows, _ = run
    cfg = _config(methods=("zero-shot", "tip-adapter"), seeds=(1,))
    par = run_bench(cfg, prepare, tmp_path / "r.jsonl", quiet=True, jobs=2)
    serial = {(r["method"], r["seed"]): r for r in rows}
    for r in par:
        assert r["targets"] == serial[(r["method"], r["seed"])]["targets"]
