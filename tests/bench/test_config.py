"""BenchConfig: YAML, presets, key=value overrides, clear errors, cell hashes."""

from __future__ import annotations

import pytest

from fewclip import methods
from fewclip.bench import (
    DEFAULT_METHODS,
    BenchConfig,
    ConfigError,
    apply_overrides,
    canonical_json,
    cell_hash,
    load_config,
    presets,
)


def test_defaults_roundtrip_through_dict_and_yaml(tmp_path):
    cfg = BenchConfig()
    assert cfg.methods == DEFAULT_METHODS
    assert cfg.shots == (1, 2, 4, 8, 16)
    assert cfg.seeds == (1, 2, 3)
    assert BenchConfig.from_dict(cfg.to_dict()) == cfg
    assert hash(BenchConfig.from_dict(cfg.to_dict())) == hash(cfg)  # usable as a dict key
    assert len({c: 1 for c in [*cfg.cells(), *cfg.cells()]}) == cfg.n_cells
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_yaml_file_with_overrides(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(
        "methods: [zero-shot, tip-adapter]\n"
        "datasets: [dtd]\n"
        "shots: [1, 16]\n"
        "params:\n  tip-adapter: {search_scale: [7, 3]}\n"
    )
    cfg = load_config(
        path,
        [
            "shots=4,1,2",
            "params.tip-adapter.alpha=1.0",
            "dataset_params.eurosat.tip-adapter-f.epochs=100",
            "protocol=oracle-test",
            "protocol_options.val_shots=2",
            "views=null",
            "datasets=dtd",
        ],
    )
    assert cfg.shots == (1, 2, 4)  # sorted
    assert cfg.params["tip-adapter"] == {"search_scale": [7, 3], "alpha": 1.0}
    assert cfg.dataset_params == {"eurosat": {"tip-adapter-f": {"epochs": 100}}}
    assert cfg.protocol == "oracle-test"
    assert cfg.protocol_options == {"val_shots": 2}
    assert cfg.views is None
    assert cfg.datasets == ("dtd",)  # a single value becomes a one-element list
    assert cfg.method_params("tip-adapter-f", "eurosat") == {"epochs": 100}
    assert cfg.method_params("tip-adapter", "dtd") == {"search_scale": [7, 3], "alpha": 1.0}


def test_override_values_are_yaml_typed():
    cfg = load_config(None, ["params.tip-adapter.search=false", "params.linear-probe.C=1e-1"])
    assert cfg.params["tip-adapter"]["search"] is False
    assert cfg.params["linear-probe"]["C"] == pytest.approx(0.1)
    cfg = load_config(None, ["params.tip-adapter.search_scale=[7, 3]"])
    assert cfg.params["tip-adapter"]["search_scale"] == [7, 3]
    cfg = load_config(None, ["params.tip-adapter.search_step=100,10"])
    assert cfg.params["tip-adapter"]["search_step"] == [100, 10]


def test_methods_all_expands_to_the_registry():
    assert load_config(None, ["methods=all"]).methods == tuple(methods.available())
    assert load_config(None, ["methods=tip-adapter"]).methods == ("tip-adapter",)


def test_unknown_override_key_names_it_and_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["shotz=1,2"])
    msg = str(e.value)
    assert "'shotz'" in msg
    assert "shots" in msg
    assert "methods" in msg
    assert "params" in msg


def test_unknown_yaml_key_names_it(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("methods: [zero-shot]\nepochs: 3\n")
    with pytest.raises(ConfigError, match=r"'epochs'.*valid keys: methods"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("methods=tip-adaptor", r"unknown method.*'tip-adaptor'.*registered: .*tip-adapter"),
        ("params.tip-adapter.alfa=1", r"params.tip-adapter.*alfa.*valid: alpha"),
        ("params.nope.alpha=1", r"params.nope: unknown method 'nope'"),
        ("protocol=test-val", r"protocol: expected one of fewshot-val"),
        ("protocol_options.shots=2", r"unknown option\(s\) shots; valid: val_shots"),
        ("protocol_options.val_shots=0", r"val_shots"),
        ("shots=0,1", r"shots: expected positive integers"),
        ("shots=1,1", r"shots: duplicate entries 1"),
        ("shots=a", r"shots: expected integers"),
        ("views=0", r"views: expected a positive integer"),
        ("shots.x=1", r"'shots' is not a mapping"),
        ("params.tip-adapter.alpha.x=1", r"at most 2 dotted levels"),
        ("shots", r"expected key=value"),
        ("params.tip-adapter.alpha=.nan", r"finite"),
    ],
)
def test_bad_overrides_raise_clear_errors(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


def test_presets_load():
    assert {"tip-adapter", "smoke"} <= set(presets())
    cfg = load_config("tip-adapter")
    assert len(cfg.datasets) == 11
    assert cfg.methods == DEFAULT_METHODS
    assert cfg.method_params("tip-adapter-f", "eurosat")["epochs"] == 100
    assert cfg.method_params("clip-adapter", "imagenet") == {"epochs": 50}
    assert cfg.method_params("tip-adapter", "fgvc_aircraft")["search_scale"] == [30, 30]
    assert cfg.n_cells == 11 * 5 * 5 * 3
    smoke = load_config("smoke", ["seeds=1"])
    assert smoke.seeds == (1,)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match=r"no such file and no such preset; presets: .*smoke"):
        load_config("no-such-preset")


def test_apply_overrides_does_not_mutate_its_input():
    data = {"params": {"tip-adapter": {"alpha": 1}}}
    out = apply_overrides(data, ["params.tip-adapter.alpha=2"])
    assert data["params"]["tip-adapter"]["alpha"] == 1
    assert out["params"]["tip-adapter"]["alpha"] == 2


# -- hashes ---------------------------------------------------------------------------------
CELL = {
    "format": "fewclip-bench/1",
    "method": "tip-adapter",
    "dataset": "imagenet",
    "backbone": "RN50",
    "shots": 16,
    "seed": 1,
    "protocol": "fewshot-val",
    "protocol_options": {},
    "params": {"search_scale": [7, 3], "alpha": 1.17},
    "views": 10,
    "prompts": "default",
}


def test_cell_hash_is_stable_and_canonical():
    h = cell_hash(CELL)
    # pinned: changing the canonical form would silently re-run every stored cell
    assert h == "b14d42e8fbcbe0a0c96d4d22294b939632ed757074d070c853e60475676b5e46"
    assert h == cell_hash(dict(reversed(list(CELL.items()))))  # key order
    assert h == cell_hash({**CELL, "params": {"alpha": 1.17, "search_scale": (7.0, 3.0)}})
    assert h != cell_hash({**CELL, "seed": 2})
    assert h != cell_hash({**CELL, "params": {"search_scale": [7, 3], "alpha": 1.18}})
    assert canonical_json({"b": 1.0, "a": (1, 2)}) == '{"a":[1,2],"b":1}'


def test_cell_hash_pinned_value():
    assert cell_hash({"a": 1}) == "015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862"


def test_cell_hash_refuses_non_finite_and_odd_values():
    with pytest.raises(ConfigError, match="finite"):
        cell_hash({"alpha": float("inf")})
    with pytest.raises(ConfigError, match="JSON-able"):
        cell_hash({"x": object()})


def test_cells_cover_the_grid_dataset_major():
    cfg = BenchConfig(
        methods=("zero-shot", "tip-adapter"), datasets=("a", "b"), shots=(1, 2), seeds=(1, 2, 3)
    )
    cells = list(cfg.cells())
    assert len(cells) == cfg.n_cells == 2 * 2 * 2 * 3
    assert [c.dataset for c in cells[:12]] == ["a"] * 12
    assert len({c.hash for c in cells}) == len(cells)
    assert cells[0].to_dict()["params"] == {}
