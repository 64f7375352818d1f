"""What the shared method interface (methods/base.py and the fewclip.methods package) shows a
user: the registry's refusals, ``run_params``, the scikit-learn parameter protocol (nested
``get_params``, ``set_params``'s message, ``repr``, estimator tags), ``fit``/``score``
messages and edge cases, and the method folder ``save`` writes (config text, checksum,
safetensors metadata, what an existing folder is described as) and ``load``'s refusals."""

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import fewclip
from fewclip import methods
from fewclip.errors import (
    DamagedFileError,
    InvalidTypeError,
    InvalidValueError,
    OutputFolderError,
    UnknownParameterError,
)
from fewclip.methods.base import Method, describe_saved, register


class _Blend(Method):
    """A user-defined method whose hyper-parameter is another method (scikit-learn's
    meta-estimator pattern): it scores with ``weight`` times the inner method's logits."""

    def __init__(self, *, inner=None, weight=1.0):
        self.inner = inner
        self.weight = weight

    def _fit(self, task):
        self.inner.fit(task)

    def _logits(self, x):
        return self.weight * self.inner._logits(x)


@pytest.fixture
def scratch_registry():
    """Registrations made by a test are undone afterwards."""
    from fewclip.methods.base import _REGISTRY

    before = dict(_REGISTRY)
    yield
    _REGISTRY.clear()
    _REGISTRY.update(before)


@pytest.fixture
def saved_zero_shot(task, tmp_path):
    return methods.create("zero-shot").fit(task).save(tmp_path / "zs")


# -- the package and the registry ----------------------------------------------------------------


def test_an_unknown_package_attribute_names_itself():
    with pytest.raises(AttributeError) as e:
        _ = methods.TipAdaptor
    assert str(e.value) == "module 'fewclip.methods' has no attribute 'TipAdaptor'"


def test_dir_of_the_package_lists_its_classes_and_functions_sorted():
    names = dir(methods)
    assert names == sorted(names)
    assert {"TipAdapter", "ZeroShot", "LPPlusPlus", "load", "create", "run_params"} <= set(names)


@pytest.mark.usefixtures("scratch_registry")
def test_a_name_registered_twice_is_refused_only_for_another_class():
    class First(Method):
        pass

    class Second(Method):
        pass

    assert register("behaviour-test-blend")(First) is First
    assert register("behaviour-test-blend")(First) is First  # the same class again: accepted
    with pytest.raises(InvalidValueError) as e:
        register("behaviour-test-blend")(Second)
    assert str(e.value) == "method name 'behaviour-test-blend' is already registered"
    assert methods.get("behaviour-test-blend") is First
    assert First.name == "behaviour-test-blend"


def test_every_unknown_parameter_gets_its_own_hint():
    with pytest.raises(UnknownParameterError) as e:
        methods.create("zero-shot", scal=1.0, dtyp="float64")
    assert str(e.value) == (
        "zero-shot: unknown parameter 'scal' (did you mean 'scale'?); 'dtyp' (did you mean "
        "'dtype'?). Its parameters are: device, dtype, scale"
    )


def test_run_params_gives_the_device_to_methods_that_take_one_unless_params_set_it():
    assert methods.run_params("zero-shot", None, seed=3, device="cuda:1") == {"device": "cuda:1"}
    assert methods.run_params("clip-adapter", {"device": "cpu"}, seed=3, device="cuda:1") == {
        "device": "cpu",
        "seed": 3,
    }
    assert methods.run_params("clip-adapter", {}, seed=3) == {"seed": 3}


# -- the scikit-learn parameter protocol ---------------------------------------------------------


def test_get_params_is_deep_by_default_and_nests_a_method_valued_parameter():
    inner = methods.ZeroShot(scale=50.0)
    blend = _Blend(inner=inner, weight=2.0)
    nested = {"inner__device": "cpu", "inner__dtype": "float32", "inner__scale": 50.0}
    assert blend.get_params() == {**nested, "inner": inner, "weight": 2.0}
    assert blend.get_params(deep=True) == {**nested, "inner": inner, "weight": 2.0}
    assert blend.get_params(deep=False) == {"inner": inner, "weight": 2.0}


def test_get_params_does_not_nest_a_class_valued_parameter():
    """A method *class* has a get_params attribute too, but it is not an estimator."""
    blend = _Blend(inner=methods.ZeroShot)
    assert blend.get_params() == {"inner": methods.ZeroShot, "weight": 1.0}


def test_set_params_refuses_an_unknown_parameter_with_the_whole_message():
    with pytest.raises(UnknownParameterError) as e:
        methods.ZeroShot().set_params(scal=1.0)
    assert str(e.value) == (
        "ZeroShot: unknown parameter 'scal' (did you mean 'scale'?). "
        "Its parameters are: device, dtype, scale"
    )


def test_repr_shows_only_the_parameters_that_differ_from_their_defaults():
    assert repr(methods.ZeroShot()) == "ZeroShot()"
    assert repr(methods.ZeroShot(scale=100)) == "ZeroShot()"  # 100 == 100.0
    assert repr(methods.ZeroShot(scale=50.0)) == "ZeroShot(scale=50.0)"
    assert (
        repr(methods.ZeroShot(dtype="float64", scale=50.0))
        == "ZeroShot(dtype='float64', scale=50.0)"
    )


def test_repr_shows_a_parameter_that_cannot_be_compared_with_its_default():
    """An array's ``!=`` is elementwise, so its truth is ambiguous: repr shows the value."""
    assert repr(methods.ZeroShot(scale=np.array([1.0, 2.0]))) == "ZeroShot(scale=array([1., 2.]))"


def test_repr_of_a_nested_method_shows_it_once_not_its_parameters_flattened():
    assert repr(_Blend(inner=methods.ZeroShot(scale=50.0))) == "_Blend(inner=ZeroShot(scale=50.0))"


def test_scikit_learn_sees_a_classifier_that_needs_labels():
    pytest.importorskip("sklearn")
    from sklearn.base import is_classifier
    from sklearn.utils import ClassifierTags, get_tags

    method = methods.ZeroShot()
    tags = get_tags(method)
    assert is_classifier(method)
    assert tags.estimator_type == "classifier"
    assert tags.target_tags.required is True
    assert tags.classifier_tags == ClassifierTags()
    assert tags.classifier_tags.multi_class is True


# -- fit and score -------------------------------------------------------------------------------


def test_fit_on_something_else_than_a_task_says_how_to_build_one():
    with pytest.raises(InvalidTypeError) as e:
        methods.ZeroShot().fit("support.pt")
    assert str(e.value) == (
        "task: expected a fewclip.Task, found str; build one with "
        "fewclip.Task(classnames, text_weights, support=fewclip.FeatureSet(...))"
    )


def test_score_refuses_sample_weights(task, queries):
    method = methods.ZeroShot().fit(task)
    with pytest.raises(InvalidValueError) as e:
        method.score(queries, torch.zeros(len(queries), dtype=torch.long), sample_weight=[1.0])
    assert str(e.value) == "sample_weight: not supported, expected None"


def test_score_of_no_queries_is_zero(task):
    method = methods.ZeroShot().fit(task)
    got = method.score(torch.zeros(0, task.dim), torch.zeros(0, dtype=torch.long))
    assert got == 0.0


# -- the folder save writes ----------------------------------------------------------------------


def test_config_json_is_indented_and_records_the_version_and_the_state_checksum(saved_zero_shot):
    text = (saved_zero_shot / "config.json").read_text()
    lines = text.splitlines()
    assert lines[0] == "{"
    assert lines[1] == '  "format": "fewclip-method/1",'
    assert lines[2] == '  "method": "zero-shot",'
    cfg = json.loads(text)
    assert cfg["fewclip_version"] == fewclip.__version__
    state = (saved_zero_shot / "state.safetensors").read_bytes()
    assert cfg["state_sha256"] == hashlib.sha256(state).hexdigest()


def test_the_state_file_names_its_method_in_its_metadata(saved_zero_shot):
    with safe_open(str(saved_zero_shot / "state.safetensors"), "pt") as f:
        assert f.metadata() == {"method": "zero-shot"}


def test_a_state_file_replaced_after_saving_fails_the_checksum(saved_zero_shot):
    path = saved_zero_shot / "state.safetensors"
    with safe_open(str(path), "pt") as f:
        weights = f.get_tensor("text_weights_")
    save_file({"text_weights_": weights.flip(0)}, str(path), metadata={"method": "zero-shot"})
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    want = json.loads((saved_zero_shot / "config.json").read_text())["state_sha256"]
    with pytest.raises(DamagedFileError) as e:
        methods.load(saved_zero_shot)
    assert str(e.value) == (
        f"{path}: checksum mismatch (SHA-256 {got[:12]}…, config.json recorded {want[:12]}…): "
        "the file changed after it was saved; the folder is damaged: fit it again "
        "(`fewclip fit ... -o FOLDER --overwrite`)"
    )


def test_a_parameter_json_cannot_write_is_named_by_its_type(task, tmp_path):
    blend = _Blend(inner=methods.ZeroShot()).fit(task)
    with pytest.raises(InvalidTypeError) as e:
        blend.save(tmp_path / "blend")
    assert str(e.value) == "not JSON serialisable: ZeroShot"
    assert not (tmp_path / "blend").exists()


def test_saving_over_a_saved_method_without_overwrite_names_what_it_holds(saved_zero_shot, task):
    method = methods.create("zero-shot").fit(task)
    with pytest.raises(OutputFolderError) as e:
        method.save(saved_zero_shot)
    assert str(e.value) == (
        f"{saved_zero_shot}: already holds a zero-shot method; pass --overwrite to replace it "
        "(Python: overwrite=True), or choose another folder (CLI: --out/-o)"
    )


def test_a_saved_folder_with_an_adapter_record_is_described_as_an_adapter(saved_zero_shot, task):
    (saved_zero_shot / "adapter.json").write_text("{}")
    assert describe_saved(saved_zero_shot) == "a zero-shot adapter"
    with pytest.raises(OutputFolderError, match="already holds a zero-shot adapter;"):
        methods.create("zero-shot").fit(task).save(saved_zero_shot)


def test_a_config_without_a_method_name_is_described_as_a_fewclip_method(tmp_path, task):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"format": "fewclip-method/1"}))
    assert describe_saved(folder) == "a fewclip method"
    with pytest.raises(OutputFolderError, match="already holds a fewclip method;"):
        methods.create("zero-shot").fit(task).save(folder)


@pytest.mark.parametrize("config", [{"format": "fewclip-method/0", "method": "zero-shot"}, [1, 2]])
def test_a_config_of_another_format_is_not_fewclips(tmp_path, task, config):
    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    assert describe_saved(folder) is None
    with pytest.raises(OutputFolderError) as e:
        methods.create("zero-shot").fit(task).save(folder)
    assert str(e.value) == (
        f"{folder}: the folder is not empty (config.json) and does not hold a method written "
        "by fewclip; fewclip never writes into a folder of yours. Choose a new or empty folder "
        "(CLI: --out/-o)."
    )


def test_saving_onto_a_file_names_the_method(tmp_path, task):
    target = tmp_path / "model.bin"
    target.write_bytes(b"data")
    with pytest.raises(OutputFolderError) as e:
        methods.create("zero-shot").fit(task).save(target)
    assert str(e.value) == f"{target}: expected a folder to write the method in, found a file"


def test_loading_another_method_says_how_to_load_it(saved_zero_shot):
    with pytest.raises(InvalidValueError) as e:
        methods.TipAdapter.load(saved_zero_shot)
    assert str(e.value) == (
        f"{saved_zero_shot}: holds a 'zero-shot' method, expected 'tip-adapter'; "
        "use fewclip.methods.load(path) to load whatever it holds"
    )
