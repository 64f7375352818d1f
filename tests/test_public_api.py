"""The front door: ``import fewclip as fc`` gives the names a user needs, lazily."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import fewclip


def test_every_public_name_resolves_to_the_object_it_names() -> None:
    from fewclip import adapter, backbones, features, methods, protocol, task, text
    from fewclip.testing import synthetic

    expected = {
        "Task": task.Task,
        "FeatureSet": task.FeatureSet,
        "create": methods.create,
        "load": methods.load,
        "available": methods.available,
        "load_backbone": backbones.load,
        "text_weights": text.text_weights,
        "extract": features.extract,
        "Protocol": protocol.Protocol,
        "evaluate": protocol.evaluate,
        "run": protocol.run,
        "Adapter": adapter.Adapter,
        "fit_adapter": adapter.fit_adapter,
        "SyntheticWorld": synthetic.SyntheticWorld,
    }
    assert set(fewclip.__all__) == {*expected, "__version__"}
    for name, obj in expected.items():
        assert getattr(fewclip, name) is obj, name
    assert set(fewclip.__all__) <= set(dir(fewclip))
    assert isinstance(fewclip.__version__, str)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="not_a_name"):
        fewclip.not_a_name  # noqa: B018


def test_import_fewclip_loads_no_torch() -> None:
    code = (
        "import json, sys; import fewclip; "
        "print(json.dumps([m for m in ('torch', 'numpy', 'PIL', 'sklearn') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_the_front_door_fits_and_predicts() -> None:
    import fewclip as fc

    world = fc.SyntheticWorld(5, 32, seed=0).calibrate(0.5)
    model = fc.create("tip-adapter", **fc.create("tip-adapter").quick_params)
    task = world.task(4, seed=1, views=2)
    assert isinstance(task, fc.Task)
    test = world.test_set()
    assert model.fit(task).predict(test.features).shape == (test.n,)
    assert "tip-adapter" in fc.available()
