"""The method registry (names, parameters, lazy imports), method folders on disk (formats,
pickle refusal), task validation and hyper-parameter checks. What every method must do is in
test_conformance.py."""

import pickle

import pytest
import torch

from fewclip import methods
from fewclip.task import FeatureSet, Task


def test_registry_lists_the_core_methods():
    assert {"zero-shot", "linear-probe", "clip-adapter", "tip-adapter", "tip-adapter-f"} <= set(
        methods.available()
    )


def test_unknown_method_name():
    with pytest.raises(KeyError, match="unknown method 'tip-adaptor'.*tip-adapter"):
        methods.create("tip-adaptor")


def test_loading_another_method_is_refused(task, tmp_path):
    methods.create("zero-shot").fit(task).save(tmp_path / "zs")
    with pytest.raises(ValueError, match="holds a 'zero-shot' method, expected 'tip-adapter'"):
        methods.TipAdapter.load(tmp_path / "zs")


def test_pickle_is_refused(task, tmp_path):
    f = tmp_path / "model.pt"
    f.write_bytes(pickle.dumps({"keys": [1, 2, 3]}))
    with pytest.raises(ValueError, match="pickle"):
        methods.load(f)
    torch.save({"w": torch.zeros(2)}, tmp_path / "zip.pt")
    with pytest.raises(ValueError, match="pickle"):
        methods.load(tmp_path / "zip.pt")
    with pytest.raises(FileNotFoundError, match="config.json"):
        methods.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        methods.load(tmp_path)


def test_task_validation():
    w = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    x, y = torch.randn(6, 8), torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="support: feature dimension 7 does not match"):
        Task(["a", "b", "c"], w, FeatureSet(torch.randn(6, 7), y))
    with pytest.raises(ValueError, match="text_weights: expected one row per class"):
        Task(["a", "b"], w, FeatureSet(x, y))
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 3\), found range \[0, 5\]"):
        Task(["a", "b", "c"], w, FeatureSet(x, torch.tensor([0, 0, 1, 1, 2, 5])))
    with pytest.raises(ValueError, match="1 classes have none: 'c'"):
        Task(["a", "b", "c"], w, FeatureSet(x, torch.tensor([0, 0, 1, 1, 1, 0])))
    with pytest.raises(ValueError, match="features: expected finite values"):
        FeatureSet(x.masked_fill(x > 1, float("inf")), y)
    with pytest.raises(ValueError, match="labels: expected shape"):
        FeatureSet(x, y[:5])
    with pytest.raises(TypeError, match="labels: expected integer class ids"):
        FeatureSet(x, y.float())
    with pytest.raises(ValueError, match="views: expected 6 images per view"):
        FeatureSet(x, y, torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="views: expected feature dimension 8"):
        FeatureSet(x, y, torch.randn(2, 6, 9))
    with pytest.raises(ValueError, match="val: feature dimension 9"):
        Task(["a", "b", "c"], w, FeatureSet(x, y), FeatureSet(torch.randn(2, 9), y[:2]))
    with pytest.raises(ValueError, match="classnames: expected at least one class"):
        Task([], w, FeatureSet(x, y))


def test_bad_hyper_parameters(task):
    with pytest.raises(ValueError, match="branch: expected one of"):
        methods.create("clip-adapter", branch="audio").fit(task)
    with pytest.raises(ValueError, match="ratio: expected a value in"):
        methods.create("clip-adapter", ratio=1.5).fit(task)
    with pytest.raises(ValueError, match="dtype: expected one of"):
        methods.create("zero-shot", dtype="int8").fit(task)
    with pytest.raises(ValueError, match="epochs: expected a non-negative integer"):
        methods.create("tip-adapter-f", epochs=-1).fit(task)
    with pytest.raises(ValueError, match="prototypes: expected a positive integer"):
        methods.create("tip-adapter", prototypes=0).fit(task)
    with pytest.raises(ValueError, match="C: expected a positive"):
        methods.create("linear-probe", C=0.0).fit(task)


def test_method_names_are_case_insensitive_and_typos_get_suggestions():
    from fewclip.errors import FewclipError, UnknownNameError

    assert methods.resolve("Tip-Adapter-F") == "tip-adapter-f"
    assert methods.get(" ZERO-SHOT ") is methods.ZeroShot
    with pytest.raises(UnknownNameError, match="did you mean 'tip-adapter'") as e:
        methods.create("tip-adaptor")
    assert isinstance(e.value, FewclipError)
    assert isinstance(e.value, KeyError)
    assert not str(e.value).startswith('"')  # no KeyError quoting


def test_unknown_parameter_lists_the_valid_ones():
    from fewclip.errors import UnknownParameterError

    with pytest.raises(UnknownParameterError, match="'alpah' \\(did you mean 'alpha'\\?\\)") as e:
        methods.create("tip-adapter", alpah=2.0)
    assert "alpha, beta" in str(e.value)
    assert isinstance(e.value, TypeError)


def test_run_params_gives_the_seed_only_to_methods_that_take_one():
    assert methods.run_params("clip-adapter", {"epochs": 3}, seed=7) == {"epochs": 3, "seed": 7}
    assert methods.run_params("clip-adapter", {"seed": 2}, seed=7) == {"seed": 2}
    assert methods.run_params("zero-shot", None, seed=7) == {}


def test_builtin_table_matches_what_each_module_registers():
    import importlib
    import pkgutil

    import fewclip.methods as pkg
    from fewclip.methods.base import _REGISTRY, BUILTIN_METHODS

    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"fewclip.methods.{mod.name}")
    builtin = {n: c for n, c in _REGISTRY.items() if c.__module__.startswith("fewclip.methods.")}
    assert set(builtin) == set(BUILTIN_METHODS)
    for name, cls in builtin.items():
        assert cls.__module__ == f"fewclip.methods.{BUILTIN_METHODS[name]}"
    for cls_name in pkg._CLASSES:
        assert getattr(pkg, cls_name).__name__ == cls_name


def test_loading_an_adapter_imports_neither_sklearn_nor_torchvision_nor_other_methods(
    task, tmp_path
):
    import subprocess
    import sys

    methods.create("zero-shot").fit(task).save(tmp_path / "zs")
    code = (
        "import sys; from fewclip.adapter import Adapter; from fewclip import methods; "
        f"m = methods.load({str(tmp_path / 'zs')!r}); "
        "print(sorted(k for k in ('sklearn', 'torchvision', 'open_clip', "
        "'fewclip.methods.tip_adapter', 'fewclip.methods.gda') if k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_gda_at_one_shot_without_views_gets_a_clear_error():
    from fewclip.errors import FewclipError

    g = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=1)
    one_shot = Task(
        list("abcd"), text, FeatureSet(torch.randn(4, 16, generator=g), torch.arange(4))
    )
    with pytest.raises(FewclipError, match="no within-class variation.*--views"):
        methods.create("gda").fit(one_shot)
    views = torch.randn(3, 4, 16, generator=g)
    with_views = Task(list("abcd"), text, FeatureSet(views[0], torch.arange(4), views))
    assert methods.create("gda").fit(with_views).logits(views[0]).shape == (4, 4)
