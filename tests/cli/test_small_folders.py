"""Small and uneven folders, mistyped names, and `fit --seed`, through the installed command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fewclip.testing.images import make_shapes_dataset

from .conftest import TINY_BACKBONE, run_fewclip

TINY = ["-b", "fewclip-tiny-vit", "--views", "1"]


@pytest.fixture(scope="module")
def uneven(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train: red_circle 3, blue_square 7, green_triangle 12 images; test: 2 each."""
    root = make_shapes_dataset(
        tmp_path_factory.mktemp("uneven") / "photos",
        classes=("red_circle", "blue_square", "green_triangle"),
        per_class={"train": 12, "test": 2},
        size=24,
    )
    for name, keep in (("red_circle", 3), ("blue_square", 7)):
        for p in sorted((root / "train" / name).glob("*.png"))[keep:]:
            p.unlink()
    return root


def test_defaults_use_every_image_and_say_what_was_chosen(uneven: Path, tmp_path: Path) -> None:
    out = tmp_path / "a"
    res = run_fewclip("fit", "-m", "tip-adapter", "-d", uneven, "-o", out, *TINY, store=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "using -k all --protocol val-free" in res.stderr
    assert "3–12 per class" in res.stderr
    rec = json.loads((out / "adapter.json").read_text())
    assert rec["draw"]["shots"] == "all"
    assert rec["protocol"] == "val-free"
    assert len(rec["draw"]["support"]["indices"]) == 3 + 7 + 12
    assert rec["draw"]["meta"]["train_per_class"] == [3, 12]


def test_all_with_fewshot_val_holds_out_images_of_big_classes(uneven: Path, tmp_path: Path) -> None:
    res = run_fewclip(
        "fit", "-k", "all", "--protocol", "fewshot-val", "-m", "zero-shot", "-d", uneven,
        "-o", tmp_path / "a", *TINY, store=tmp_path,
    )  # fmt: skip
    assert res.returncode == 1
    assert "'red circle') has 3" in res.stderr
    assert "--protocol val-free" in res.stderr


def test_too_many_shots_fails_before_loading_a_model_and_names_the_flags(
    uneven: Path, tmp_path: Path
) -> None:
    res = run_fewclip(
        "fit", "-k", "16", "-m", "zero-shot", "-d", uneven, "-o", tmp_path / "a", *TINY,
        store=tmp_path,
    )  # fmt: skip
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert "note: fewclip-tiny-vit" not in res.stderr
    assert "'red circle') has 3 images" in res.stderr
    for flag in ("-k all", "--repeat", "--allow-fewer", "--protocol val-free"):
        assert flag in res.stderr
    res = run_fewclip(
        "fit", "-k", "16", "--allow-fewer", "-m", "zero-shot", "-d", uneven,
        "-o", tmp_path / "b", *TINY, store=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-m", "tip-adaptor"], "did you mean 'tip-adapter'"),
        (["-m", "zero-shot", "-p", "alpah=2"], "unknown parameter 'alpah'"),
        (["-m", "tip-adapter", "-p", "alpah=2"], "did you mean 'alpha'"),
        (["-m", "zero-shot", "-k", "many"], "expected a positive integer or 'all'"),
        (["-m", "zero-shot", "--protocol", "fewshot"], "expected one of fewshot-val"),
        (["-m", "zero-shot", "-b", "ViT-B/17"], "did you mean 'ViT-B/16'"),
    ],
)
def test_bad_arguments_exit_2_with_a_suggestion(
    uneven: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    tail = ["--views", "1"] if "-b" in args else TINY
    res = run_fewclip("fit", *args, "-d", uneven, "-o", tmp_path / "a", *tail, store=tmp_path)
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr
    assert "Traceback" not in res.stderr


def test_method_names_are_case_insensitive(uneven: Path, tmp_path: Path) -> None:
    res = run_fewclip(
        "fit", "-m", "Zero-Shot", "-d", uneven, "-o", tmp_path / "a", *TINY, store=tmp_path
    )
    assert res.returncode == 0, res.stderr
    assert "fitted zero-shot" in res.stdout


def test_fit_seed_gives_the_same_adapter_as_the_bench_cell(uneven: Path, tmp_path: Path) -> None:
    store = tmp_path / "s"
    common = {"shots": 1, "seed": 2, "epochs": 5}
    res = run_fewclip(
        "fit", "-m", "clip-adapter", "-d", uneven, "-o", tmp_path / "a", *TINY,
        "-k", str(common["shots"]), "--seed", str(common["seed"]), "--protocol", "fewshot-val",
        "-p", f"epochs={common['epochs']}", "--evaluate", store=store,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    rec = json.loads((tmp_path / "a" / "adapter.json").read_text())
    assert rec["params"]["seed"] == 2
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(
        f"methods: [clip-adapter]\ndatasets: [{uneven}]\nshots: [1]\nseeds: [2]\n"
        "backbones: [fewclip-tiny-vit]\nviews: 1\nprotocol: fewshot-val\n"
        "params: {clip-adapter: {epochs: 5}}\n"
    )
    res = run_fewclip("bench", cfg, "-o", tmp_path / "bench", "-q", store=store)
    assert res.returncode == 0, res.stderr
    (row,) = [json.loads(ln) for ln in (tmp_path / "bench" / "results.jsonl").open()]
    assert row["params"]["seed"] == 2
    assert rec["test"]["units"] == "percent"
    assert row["accuracy"] == pytest.approx(rec["test"]["top1"], abs=1e-3)
    assert row["n_support"] == 3
    assert rec["draw"]["support"]["indices"]


def test_fourteen_images_per_class_with_the_automatic_split_can_do_k4(tmp_path: Path) -> None:
    """No split folders: 50/20/30 leaves 7 training images a class; -k 4 validates on the
    automatic val split. A stray text file is reported as a one-line note, no source path."""
    made = make_shapes_dataset(
        tmp_path / "tmp", classes=("red_circle", "blue_square"), per_class={"train": 14}, size=24
    )
    photos = tmp_path / "photos"
    (made / "train").rename(photos)
    (photos / "red_circle" / "notes.txt").write_text("not an image")
    res = run_fewclip(
        "fit", "-d", photos, "-k", "4", "-m", "zero-shot", "-o", tmp_path / "a", *TINY,
        store=tmp_path / "s",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "using -k 4 --protocol full-val" in res.stderr
    notes = [ln for ln in res.stderr.splitlines() if "notes.txt" in ln]
    assert notes == [
        "note: folder:photos: skipped 1 files that are not images: red_circle/notes.txt"
    ]
    assert "Warning" not in res.stderr
    assert ".py:" not in res.stderr


def test_coop_fits_and_predicts_through_the_installed_command(
    opt_data: Path, tmp_path: Path
) -> None:
    """The prompt learner through the CLI: the tiny backbone's text tower reaches CoOp, the
    adapter predicts without it, and its parameters are the ones asked for."""
    adapter, store = tmp_path / "coop", tmp_path / "store"
    res = run_fewclip(
        "fit", "-m", "coop", "-d", opt_data, "-k", "2", "-b", TINY_BACKBONE, "--views", "1",
        "-p", "epochs=3", "-p", "n_ctx=4", "-o", adapter, "--json", store=store,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    record = json.loads(res.stdout)
    assert record["method"] == "coop"
    assert record["params"]["epochs"] == 3
    assert record["params"]["n_ctx"] == 4
    pred = run_fewclip(
        "predict", adapter, opt_data / "test", "--format", "csv", "--top-k", "1", store=store
    )
    assert pred.returncode == 0, pred.stderr
    assert len(pred.stdout.strip().splitlines()) == 1 + 3 * 4  # header + every test image


#: CoOp's successors through the CLI: (method, the -p settings that keep the fit short)
PROMPT_LEARNERS = [
    ("kgcoop", ["epochs=3", "weight=2.0"]),
    ("prograd", ["epochs=3", "n_ctx=6", "lam=0.8"]),
    ("cocoop", ["epochs=2", "batch_size=4", "prompt_batch=5"]),  # predict: the tower per image
]


@pytest.mark.parametrize(("method", "params"), PROMPT_LEARNERS, ids=[m for m, _ in PROMPT_LEARNERS])
def test_prompt_learners_fit_and_predict_through_the_installed_command(
    opt_data: Path, tmp_path: Path, method: str, params: list[str]
) -> None:
    """The tiny backbone's text tower reaches the method through `fewclip fit`, the record
    keeps the parameters asked for, and `fewclip predict` scores every test image."""
    adapter, store = tmp_path / method, tmp_path / "store"
    flags = [x for p in params for x in ("-p", p)]
    res = run_fewclip(
        "fit", "-m", method, "-d", opt_data, "-k", "2", "-b", TINY_BACKBONE, "--views", "1",
        *flags, "-o", adapter, "--json", store=store,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    record = json.loads(res.stdout)
    assert record["method"] == method
    for p in params:
        key, value = p.split("=")
        assert str(record["params"][key]) == value
    pred = run_fewclip(
        "predict", adapter, opt_data / "test", "--format", "csv", "--top-k", "1", store=store
    )
    assert pred.returncode == 0, pred.stderr
    assert len(pred.stdout.strip().splitlines()) == 1 + 3 * 4  # header + every test image


@pytest.mark.parametrize(
    ("method", "params"),
    [("coop", ["epochs=3", "n_ctx=4"]), ("cocoop", ["epochs=1", "batch_size=4"])],
    ids=["coop", "cocoop"],
)
def test_prompt_learners_through_a_local_hf_clip(
    opt_data: Path, tmp_path: Path, method: str, params: list[str]
) -> None:
    """A transformers CLIP folder named with -b hf:PATH opens its text tower to the prompt
    learners: CoOp fits and predicts; CoCoOp's predict attaches the tower of the reloaded
    model."""
    pytest.importorskip("transformers")
    from fewclip.backbones.tiny import write_tiny_hf

    model = write_tiny_hf(tmp_path / "clip-hf")
    adapter, store = tmp_path / method, tmp_path / "store"
    flags = [x for p in params for x in ("-p", p)]
    res = run_fewclip(
        "fit", "-m", method, "-d", opt_data, "-k", "2", "-b", f"hf:{model}", "--views", "1",
        *flags, "-o", adapter, "--json", store=store,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    record = json.loads(res.stdout)
    assert record["method"] == method
    assert record["backbone"]["family"] == "hf"
    pred = run_fewclip(
        "predict", adapter, opt_data / "test", "--format", "csv", "--top-k", "1", store=store
    )
    assert pred.returncode == 0, pred.stderr
    assert len(pred.stdout.strip().splitlines()) == 1 + 3 * 4  # header + every test image
