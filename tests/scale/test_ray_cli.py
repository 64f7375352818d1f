"""`fewclip extract` and `fewclip bench` with --executor ray, through the installed command:
a local Ray started by the command, then the running cluster joined with --ray-address auto."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fewclip.testing.cli import run_fewclip
from fewclip.testing.images import make_shapes_dataset

TINY = "fewclip-tiny-vit"


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ray-cli") / "photos"
    classes = ("red_circle", "blue_square", "green_triangle")
    return make_shapes_dataset(
        root, classes=classes, per_class={"train": 6, "test": 4}, size=32
    ).resolve()


def _shards(store: Path) -> dict[str, str]:
    return {
        str(f.relative_to(store)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(store.rglob("*.safetensors"))
    }


def _rows(out: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()]


def test_extract_on_a_local_ray_writes_the_local_store(photos: Path, tmp_path: Path) -> None:
    args = ("extract", "-d", photos, "-b", TINY, "--views", "2", "--json")
    local = run_fewclip(*args, store=tmp_path / "local")
    assert local.returncode == 0, local.stderr
    ray = run_fewclip(*args, "--executor", "ray", "--ray-workers", "2", store=tmp_path / "ray")
    assert ray.returncode == 0, ray.stderr
    assert _shards(tmp_path / "ray") == _shards(tmp_path / "local")
    assert len(_shards(tmp_path / "ray")) == 4  # train plain + 2 views, test plain
    splits = {s["split"]: s for s in json.loads(ray.stdout)["splits"]}
    assert splits["train"]["encoded"] == 18
    assert splits["test"]["encoded"] == 12


def test_bench_joins_a_running_cluster_and_gives_the_local_rows(
    ray_local, photos: Path, tmp_path: Path
) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"methods: [zero-shot, tip-adapter]\ndatasets: [{photos}]\nshots: [1, 2]\n"
        f"seeds: [1, 2]\nbackbones: [{TINY}]\nviews: 1\nprotocol: val-free\n"
    )
    store = tmp_path / "store"
    local = run_fewclip("bench", grid, "-o", tmp_path / "local", "-q", store=store)
    assert local.returncode == 0, local.stderr
    ray = run_fewclip(
        "bench", grid, "-o", tmp_path / "ray", "-q", "--executor", "ray",
        "--ray-address", "auto", "--ray-workers", "2", store=store,
    )  # fmt: skip
    assert ray.returncode == 0, ray.stderr
    keep = ("hash", "accuracy", "params", "fitted", "n_support")
    by_hash = {r["hash"]: {k: r[k] for k in keep} for r in _rows(tmp_path / "local")}
    rows = _rows(tmp_path / "ray")
    assert len(rows) == len(by_hash) == 8
    assert {r["hash"]: {k: r[k] for k in keep} for r in rows} == by_hash
    assert {(r["executor"], r["jobs"]) for r in rows} == {("ray", 2)}
    assert "zero-shot" in ray.stdout  # the table, as with the local executor


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--ray-address", "auto"), "--ray-address: needs --executor ray"),
        (("--ray-workers", "2"), "--ray-workers: needs --executor ray"),
        (("--executor", "ray", "--jobs", "2"), "--jobs: with --executor ray"),
        (("--executor", "dask"), "expected local or ray, found 'dask'"),
    ],
)
def test_executor_options_that_contradict_are_usage_errors(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    res = run_fewclip("bench", "smoke", "-o", tmp_path / "o", *args, store=tmp_path / "s")
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    assert not (tmp_path / "o").exists()
