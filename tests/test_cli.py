"""The `fewclip` command end to end in a subprocess."""

import json
import subprocess
import sys


def run(*args, check=True):
    return subprocess.run(
        [sys.executable, "-m", "fewclip.cli", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=300,
    )


def test_help():
    out = run("--help").stdout
    assert "demo" in out
    assert "Example: fewclip demo" in run("demo", "--help").stdout


def test_demo_writes_results(tmp_path):
    res = run("demo", "--out", str(tmp_path), "--shots", "1,4", "--seeds", "1,2", "--classes", "5")
    assert "SYNTHETIC features" in res.stdout
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    from fewclip import methods

    assert {r["method"] for r in rows} == set(methods.available())
    assert len(rows) == len(methods.available()) * 2 * 2
    assert all(0 <= r["accuracy"] <= 100 for r in rows)
    md = (tmp_path / "results.md").read_text()
    assert "| tip-adapter |" in md
    assert "4-shot" in md


def test_bad_arguments_exit_non_zero(tmp_path):
    res = run("demo", "--shots", "one", check=False)
    assert res.returncode == 2
    assert "expected comma-separated integers, found 'one'" in res.stderr
    assert "Traceback" not in res.stderr
    res = run("nosuchcommand", check=False)
    assert res.returncode != 0
