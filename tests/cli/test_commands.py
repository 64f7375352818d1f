"""The `fewclip` command end to end on tiny generated data.

Most tests run commands in-process through ``fewclip.cli.main`` (same code path as the console
script, minus interpreter start-up); the demo, an error case, the interrupted bench and one
pass over every other command run in real ``python -m fewclip.cli`` subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from fewclip.cli import main
from fewclip.testing.cli import default_sigint
from fewclip.testing.images import draw_shape_image, make_shapes_dataset

COMMANDS = [
    ["demo"],
    ["extract"],
    ["fit"],
    ["predict"],
    ["evaluate"],
    ["bench"],
    ["reproduce"],
    ["cache", "ls"],
    ["cache", "info"],
    ["cache", "rm"],
    ["datasets", "check"],
]
TINY = ["--backbone", "fewclip-tiny-vit"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    classes = ("red_circle", "blue_square", "green_triangle", "yellow_star")
    return make_shapes_dataset(
        root / "data", classes=classes, per_class={"train": 12, "test": 4}, size=48
    )


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "store"
    monkeypatch.setenv("FEWCLIP_STORE", str(path))
    return path


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def subprocess_env(store: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["FEWCLIP_STORE"] = str(store)
    return env


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_help_of_every_command(cmd: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run([*cmd, "--help"], capsys)
    assert code == 0
    assert "Usage:" in out
    assert "Example" in out


def test_top_level_help_lists_commands_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for name in ("demo", "extract", "fit", "predict", "evaluate", "bench", "reproduce", "cache"):
        assert name in out
    assert "Exit codes" in out


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["fit", "--data", "/no/such/folder", "-o", "x"], 1, "no such folder or file"),
        (["fit", "--data", "x", "-o", "y", "--shots", "many"], 2, "--shots"),
        (["predict", "/no/such/adapter", "a.png"], 1, "no such adapter folder"),
        (["evaluate"], 1, "ADAPTER folder or --method"),
        (["fit", "-m", "nope", "--data", "x", "-o", "y"], 2, "unknown method 'nope'"),
        (["bench", "no-such-preset", "--dry-run"], 1, "no-such-preset"),
        (["bench", "smoke", "shots", "--dry-run"], 1, "key=value"),
        (["datasets", "check", "dtd", "--root", "/no/such/root"], 1, "PROBLEMS"),
        (["cache", "rm"], 1, "nothing to delete"),
        (["nosuchcommand"], 2, "No such command"),
    ],
)
def test_bad_arguments_give_one_clear_line(
    args: list[str], code: int, needle: str, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    got, out, err = run(args, capsys)
    assert got == code
    assert needle in out + err
    assert "Traceback" not in err
    if code == 1 and "PROBLEMS" not in needle:
        assert len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 1


def test_error_in_a_subprocess_and_debug_traceback(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "fewclip.cli", "fit", "--data", str(tmp_path / "nope"), "-o", "x"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(tmp_path))
    assert res.returncode == 1
    assert res.stderr.strip().startswith("error:")
    assert "Traceback" not in res.stderr
    cmd.insert(3, "--debug")
    res = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(tmp_path))
    assert res.returncode == 1
    assert "Traceback" in res.stderr


def test_extract_then_cache_ls_info_rm(
    shapes: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["extract", "-d", str(shapes), *TINY, "--views", "2", "--json"], capsys)
    assert code == 0
    rec = json.loads(out)
    assert {s["split"]: s["encoded"] for s in rec["splits"]} == {"test": 16, "train": 48}
    code, out, _ = run(["extract", "-d", str(shapes), *TINY, "--views", "2", "--json"], capsys)
    assert all(s["from_store"] for s in json.loads(out)["splits"])  # second time: no encoding
    code, out, _ = run(["cache", "ls"], capsys)
    assert out.splitlines()[0].split()[:4] == ["key", "kind", "split", "backbone"]
    assert "fewclip-tiny-vit (" in out
    code, out, _ = run(["cache", "ls", "--json"], capsys)
    entries = json.loads(out)
    assert sorted((e["split"].split("/")[-1], e["view"]) for e in entries) == [
        ("test", "plain"),
        ("train", "augment0"),
        ("train", "augment1"),
        ("train", "plain"),
    ]
    key = entries[0]["key"]
    code, out, _ = run(["cache", "info", key[:10], "--verify"], capsys)
    info = json.loads(out)
    assert code == 0
    assert info["key"] == key
    assert info["problems"] == []
    code, _, _ = run(["cache", "rm", key[:10]], capsys)
    code, out, _ = run(["cache", "ls", "--json"], capsys)
    assert code == 0
    assert len(json.loads(out)) == 3
    code, _, err = run(["cache", "info", "zzzz"], capsys)
    assert code == 1
    assert "no entry starts with" in err
    code, _, _ = run(["cache", "rm", "--all", "--yes"], capsys)
    code, out, _ = run(["cache", "ls", "--json"], capsys)
    assert json.loads(out) == []


def test_fit_predict_evaluate(
    shapes: Path, store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter = tmp_path / "adapter"
    args = ["fit", "-m", "tip-adapter", "-d", str(shapes), "-k", "4", *TINY]
    code, out, _ = run([*args, "--views", "2", "-o", str(adapter), "--json"], capsys)
    assert code == 0
    rec = json.loads(out)
    assert rec["method"] == "tip-adapter"
    assert rec["protocol"] == "fewshot-val"
    assert rec["classnames"] == ["blue square", "green triangle", "red circle", "yellow star"]
    assert len(rec["draw"]["support"]["indices"]) == 16
    assert rec["prompts"]["templates"] == ["a photo of a {}."]
    saved = json.loads((adapter / "adapter.json").read_text())
    assert saved["backbone"]["name"] == "fewclip-tiny-vit"
    assert saved["backbone"]["id"]
    # new images, never seen by extraction: a file and a folder
    new = tmp_path / "new"
    new.mkdir()
    rng = np.random.default_rng(99)
    for i, cls in enumerate(["red_circle", "yellow_star", "blue_square"]):
        draw_shape_image(cls, rng, 48).save(new / f"{i}.png")
    code, out, _ = run(["predict", str(adapter), str(new), "-k", "2", "-f", "json"], capsys)
    assert code == 0
    preds = json.loads(out)
    assert [Path(p["image"]).name for p in preds] == ["0.png", "1.png", "2.png"]
    for p in preds:
        probs = [t["prob"] for t in p["top"]]
        assert len(probs) == 2
        assert probs[0] >= probs[1]
        assert 0 < sum(probs) <= 1 + 1e-6
    code, out, _ = run(["predict", str(adapter), str(new / "0.png"), "-f", "csv"], capsys)
    lines = out.strip().splitlines()
    assert lines[0] == "image,rank,label,class,prob,error"
    assert len(lines) == 1 + 4
    code, out, _ = run(["predict", str(adapter), str(new / "0.png")], capsys)
    assert code == 0
    assert "0.png" in out
    assert "%" in out
    # a different backbone is refused
    code, _, err = run(["predict", str(adapter), str(new), "-b", "fewclip-tiny-rn"], capsys)
    assert code == 4
    assert "different" in err
    # evaluate the adapter on its own dataset's test split
    code, out, _ = run(["evaluate", str(adapter), "--json", "--per-class"], capsys)
    ev = json.loads(out)
    assert code == 0
    assert ev["n"] == 16
    assert ev["split"] == "test"
    assert ev["top1"] <= ev["top5"]
    assert ev["units"] == "percent"
    # top-1 equals what `predict` says of the same 16 test images, counted here
    code, out, _ = run(
        ["predict", str(adapter), str(shapes / "test"), "-k", "1", "-f", "json"], capsys
    )
    right = [
        Path(p["image"]).parent.name.replace("_", " ") == p["top"][0]["class"]
        for p in json.loads(out)
    ]
    assert code == 0
    assert len(right) == 16
    assert ev["top1"] == pytest.approx(100.0 * sum(right) / 16, abs=1e-6)
    assert len(ev["per_class"]) == 4
    macro = sum(r["accuracy"] for r in ev["per_class"]) / 4
    assert ev["macro"] == pytest.approx(macro, abs=1e-3)
    # a method fitted on the fly
    code, out, _ = run(
        ["evaluate", "-m", "zero-shot", "-d", str(shapes), *TINY, "-k", "2", "--views", "1", "-q"],
        capsys,
    )
    assert code == 0
    assert "zero-shot on folder:data/test" in out


def test_demo_subprocess(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "fewclip.cli", "demo", "--out", str(out), "--fast"]
    cmd += ["--warmup-steps", "0", "--views", "2", "--world", "none"]  # world: test_demo_honest
    res = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "RANDOM weights" in res.stderr
    assert "TINY TOY backbone" in res.stdout
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * 3  # four methods at 1, 4 and 16 shots, one seed
    assert {r["method"] for r in rows} == {
        "zero-shot",
        "linear-probe",
        "tip-adapter",
        "tip-adapter-f",
    }
    assert (out / "results.md").read_text().count("zero-shot") >= 1
    pytest.importorskip("matplotlib")
    assert (out / "accuracy_vs_shots.png").stat().st_size > 10_000
    assert (out / "accuracy_vs_shots.svg").is_file()


def _bench_config(path: Path, shapes: Path) -> Path:
    cfg = path / "grid.yaml"
    cfg.write_text(
        f"methods: [zero-shot, tip-adapter, tip-adapter-f]\ndatasets: [{shapes}]\n"
        "shots: [1, 4]\nseeds: [1, 2]\nbackbones: [fewclip-tiny-vit]\nviews: 2\n"
    )
    return cfg


def _table(out: Path) -> str:
    return (out / "results.md").read_text()


#: A sitecustomize hook that makes the second bench cell of its process wait for a signal.
PAUSE_SECOND_CELL = """
import time

import fewclip.bench.runner as runner

_run_cell, _calls = runner.run_cell, []


def run_cell(*args, **kwargs):
    _calls.append(1)
    if len(_calls) == 2:
        time.sleep(600)  # the test sends SIGINT here
    return _run_cell(*args, **kwargs)


runner.run_cell = run_cell
"""


def test_bench_interrupted_then_resumed(shapes: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    cfg = _bench_config(tmp_path, shapes)
    env = subprocess_env(store)
    # reference: an uninterrupted run
    ref = tmp_path / "ref"
    base = [sys.executable, "-m", "fewclip.cli", "bench", str(cfg), "--quiet"]
    res = subprocess.run([*base, "-o", str(ref)], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    n_cells = 3 * 2 * 2
    assert len((ref / "results.jsonl").read_text().splitlines()) == n_cells
    # a run interrupted after its first cell: a sitecustomize hook (this process only) makes
    # the second cell wait, so the interrupt always lands mid-run; Ctrl-C once the row is there
    out = tmp_path / "killed"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PAUSE_SECOND_CELL)
    paused = {
        **env,
        "PYTHONPATH": os.pathsep.join(filter(None, (str(hook), env.get("PYTHONPATH")))),
    }
    proc = subprocess.Popen(
        [*base, "-o", str(out)],
        env=paused,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        preexec_fn=default_sigint,
    )
    jsonl = out / "results.jsonl"
    deadline = time.time() + 300
    while not (jsonl.exists() and jsonl.read_text().count("\n") >= 1):
        assert proc.poll() is None, "the bench ended before its first row was written"
        assert time.time() < deadline, "no row written within 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    before = jsonl.read_text().splitlines()
    assert proc.returncode == 130, err
    assert "Finished cells are kept in" in err.decode()
    assert "resume" in err.decode()
    assert len(before) == 1
    # resumed with two worker processes: same table as the uninterrupted single-process run
    res = subprocess.run(
        [*base, "-o", str(out), "--jobs", "2"], capture_output=True, text=True, env=env
    )
    assert res.returncode == 0, res.stderr
    rows = [json.loads(x) for x in jsonl.read_text().splitlines() if x.strip().endswith("}")]
    hashes = [r["hash"] for r in rows]
    assert len(hashes) == n_cells
    assert len(set(hashes)) == n_cells
    assert {r["jobs"] for r in rows[len(before) :]} == {2}
    assert _table(out) == _table(ref)


def test_bench_dry_run_and_reproduce_tip_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["bench", "smoke", "shots=1,2", "protocol=coop-val", "--dry-run"], capsys)
    assert code == 0
    assert "protocol: coop-val" in out
    assert "# 16 cells" in out
    tip = tmp_path / "dtd.yaml"
    tip.write_text(
        "root_path: ''\nload_cache: False\nload_pre_feat: False\nsearch_hp: True\n"
        "search_scale: [9, 4]\nsearch_step: [200, 20]\ninit_beta: 1\ninit_alpha: 2.5\n"
        "dataset: 'dtd'\nshots: 16\nbackbone: 'RN50'\nlr: 0.001\naugment_epoch: 10\n"
        "train_epoch: 30\n"
    )
    code, out, _ = run(["reproduce", "--tip-config", str(tip), "seeds=1", "--dry-run"], capsys)
    assert code == 0
    assert "- dtd" in out
    assert "protocol: full-val" in out
    # the file's values win over the preset's per-dataset ones ([13, 13], 2 and 20 for DTD)
    from fewclip.bench import BenchConfig

    cfg = BenchConfig.from_dict(yaml.safe_load(out.split("\n# ")[0]))
    for method in ("tip-adapter", "tip-adapter-f"):
        params = cfg.method_params(method, "dtd")
        assert list(params["search_scale"]) == [9, 4], params
        assert params["alpha"] == 2.5, params
    assert cfg.method_params("tip-adapter-f", "dtd")["epochs"] == 30
    tip.write_text("dataset: dtd\nwhat: 1\n")
    code, _, err = run(["reproduce", "--tip-config", str(tip), "--dry-run"], capsys)
    assert code == 1
    assert "unknown key(s) what" in err
    code, out, _ = run(["reproduce", "--datasets", "imagenet", "--dry-run"], capsys)
    assert "protocol: oracle-test" in out


def _fake_dtd(root: Path) -> Path:
    """A 3-class DTD in CoOp's layout (images/<class>/*.jpg + split_zhou JSON), drawn shapes."""
    drawn = {"banded": "red_circle", "blotchy": "blue_square", "braided": "green_triangle"}
    rng = np.random.default_rng(0)
    split: dict[str, list[list[object]]] = {}
    for part, n in (("train", 6), ("val", 2), ("test", 3)):
        split[part] = []
        for i in range(n):
            for label, (cls, shape) in enumerate(drawn.items()):
                rel = f"{cls}/{part}_{i:02d}.jpg"
                path = root / "dtd" / "images" / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                draw_shape_image(shape, rng, size=40).save(path)
                split[part].append([rel, label, cls])
    (root / "dtd" / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    return root


def test_reproduce_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _fake_dtd(tmp_path / "data")
    out = tmp_path / "repro"
    args = ["reproduce", "--datasets", "dtd", "--root", str(root), "-o", str(out), "-q"]
    args += ["--store", str(tmp_path / "store"), "backbones=fewclip-tiny-vit", "views=2"]
    args += ["shots=1,2", "seeds=1", "methods=zero-shot,tip-adapter,tip-adapter-f"]
    args += ["dataset_params.dtd.tip-adapter-f.epochs=2"]
    code, stdout, err = run(args, capsys)
    assert code == 0, err
    table = (out / "paper_vs_ours.md").read_text()
    assert table == stdout.split("paper numbers:")[0]
    rows = [line.split(" | ") for line in table.splitlines()[2:]]
    assert len(rows) == 6  # zero-shot, Tip and Tip-F, each at 1 and 2 shots
    by_key = {(r[1], r[2]): r for r in rows}
    # zero-shot reads no support image: the same accuracy at every shot count, paper 42.20 (RN50)
    assert by_key[("zero-shot", "1")][4:] == by_key[("zero-shot", "2")][4:]
    assert by_key[("zero-shot", "1")][4] == "42.20"
    # DTD, RN50: Tip-Adapter 46.22 at 1 shot, Tip-Adapter-F 53.72 at 2 shots (paper Table 2)
    assert by_key[("tip-adapter", "1")][4] == "46.22"
    assert by_key[("tip-adapter-f", "2")][4] == "53.72"
    assert all(r[3] == "full-val" for r in rows)  # DTD's protocol in the paper; not LEAKY
    jsonl = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert {r["dataset"] for r in jsonl} == {"dtd"}
    assert len(jsonl) == 6
    assert all(0.0 <= r["accuracy"] <= 100.0 for r in jsonl)


def test_every_command_as_a_console_process(shapes: Path, tmp_path: Path) -> None:
    """extract → cache ls/info → fit → predict (new images) → evaluate → datasets check →
    reproduce → cache rm, each a separate ``python -m fewclip.cli`` process (demo and bench
    have their own subprocess tests above)."""
    env = subprocess_env(tmp_path / "store")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "fewclip.cli", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)

    res = cli("extract", "-d", str(shapes), *TINY, "--views", "2", "--json", "-q")
    assert res.returncode == 0, res.stderr
    assert {s["split"]: s["encoded"] for s in json.loads(res.stdout)["splits"]} == {
        "test": 16,
        "train": 48,
    }
    res = cli("cache", "ls", "--json")
    keys = [e["key"] for e in json.loads(res.stdout)]
    assert res.returncode == 0
    assert len(keys) == 4
    res = cli("cache", "info", keys[0][:12])
    assert res.returncode == 0
    assert json.loads(res.stdout)["key"] == keys[0]

    adapter = tmp_path / "adapter"
    res = cli("fit", "-m", "tip-adapter", "-d", str(shapes), "-k", "2", *TINY, "--views", "2")
    assert res.returncode == 2
    assert "--out" in res.stderr
    res = cli("fit", "-m", "tip-adapter", "-d", str(shapes), "-k", "2", *TINY, "--views", "2",
              "-o", str(adapter), "-q")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert (adapter / "adapter.json").is_file()
    new = tmp_path / "new"
    new.mkdir()
    rng = np.random.default_rng(7)
    for i, cls in enumerate(["green_triangle", "red_circle"]):
        draw_shape_image(cls, rng, 48).save(new / f"{i}.png")
    res = cli("predict", str(adapter), str(new), "-k", "3", "-f", "json")
    assert res.returncode == 0, res.stderr
    preds = json.loads(res.stdout)
    assert [Path(p["image"]).name for p in preds] == ["0.png", "1.png"]
    assert all(len(p["top"]) == 3 for p in preds)
    res = cli("evaluate", str(adapter), "--json")
    assert res.returncode == 0, res.stderr
    ev = json.loads(res.stdout)
    assert ev["n"] == 16
    assert 0.0 <= ev["top1"] <= ev["top5"] <= 100.0
    chart = tmp_path / "per_class.svg"
    res = cli("evaluate", str(adapter), "--per-class", "--plot", str(chart), "-q")
    assert res.returncode == 0, res.stderr
    svg = chart.read_text()
    assert "<svg" in svg
    assert "TOY backbone" in svg
    assert all(name in svg for name in ("green triangle", "red circle"))
    res = cli("evaluate", str(adapter), "--plot", str(chart))
    assert res.returncode == 1
    assert "exists" in res.stderr

    data = _fake_dtd(tmp_path / "data")
    res = cli("datasets", "check", "dtd", "--root", str(data), "--json")
    report = json.loads(res.stdout)[0]
    # a 3-class toy DTD is not the published 47-class one: reported, exit code 1
    assert res.returncode == 1
    assert not report["ok"]
    assert report["problems"]
    res = cli("reproduce", "--datasets", "dtd", "--root", str(data), "-o", str(tmp_path / "r"),
              "-q", "backbones=fewclip-tiny-vit", "views=2", "shots=1", "seeds=1",
              "methods=zero-shot,tip-adapter")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "| dtd | tip-adapter | 1 | full-val | 46.22 |" in res.stdout

    res = cli("cache", "rm", "--all", "--yes")
    assert res.returncode == 0, res.stderr
    assert json.loads(cli("cache", "ls", "--json").stdout) == []


def _leaf_commands(cmd, path=()):  # type: ignore[no-untyped-def]
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _leaf_commands(sub, (*path, name))
    else:
        yield " ".join(path), cmd


def test_every_option_and_argument_of_every_command_has_a_description() -> None:
    import typer

    from fewclip.cli import app

    missing = [
        f"{path} {p.name}"
        for path, cmd in _leaf_commands(typer.main.get_command(app))
        for p in cmd.params
        if not (getattr(p, "help", None) or "").strip()
    ]
    assert missing == []


def test_help_pages_are_plain_and_keep_example_lines(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["evaluate", "--help"], capsys)
    assert code == 0
    assert "<bool>" not in out
    assert "╭" not in out
    assert "\n    fewclip evaluate --method tip-adapter --data dtd" in out


def test_help_and_missing_arguments_do_not_import_torch() -> None:
    code = (
        "import sys; from fewclip.cli import main; "
        "main(['--help']); main(['fit', '--help']); main(['fit', '-m', 'zero-shot']); "
        "main(['predict']); "
        "print(sorted(m for m in ('torch', 'sklearn', 'open_clip') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.strip().splitlines()[-1] == "[]", res.stderr


def test_the_cli_reference_is_generated_from_every_command() -> None:
    import typer

    from fewclip.cli import app
    from fewclip.cli.reference import markdown

    ref = markdown()
    for leaf, cmd in _leaf_commands(typer.main.get_command(app)):
        assert f"## `fewclip {leaf}`" in ref
        for param in cmd.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert f"`{opt}`" in ref, (leaf, opt)
    assert "## `fewclip`\n" in ref
    assert "`--debug`" in ref
