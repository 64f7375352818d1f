"""Every registered method passes the conformance suite (fewclip.testing.conformance)."""

import pytest

from fewclip import methods
from fewclip.testing.conformance import method_checks

CASES = [
    pytest.param(run, id=f"{name}-{check}")
    for name in methods.available()
    for check, run in method_checks(methods.get(name))
]


@pytest.mark.parametrize("run", CASES)
def test_method_conforms(run):
    run()


# -- the suite fails on broken methods ---------------------------------------------------------
import torch  # noqa: E402

from fewclip.methods.base import _REGISTRY, Method, register  # noqa: E402
from fewclip.methods.zero_shot import ZeroShot  # noqa: E402
from fewclip.testing import check_method  # noqa: E402


@pytest.fixture
def registered():
    """Register throw-away method classes for one test, then forget them."""
    names = []

    def add(name, cls):
        names.append(name)
        return register(name)(cls)

    yield add
    for name in names:
        _REGISTRY.pop(name, None)


class _ForgetsOnSave(ZeroShot):
    """Saves nothing it fitted: loaded logits differ."""

    _state_tensors = ()

    def _load_extra_state(self, tensors):
        self.text_weights_ = torch.zeros(len(self.classnames_), self.n_features_in_)


class _PeeksAtValidation(ZeroShot):
    """Declares uses_validation = False but moves its classifier with task.val."""

    def _fit(self, task):
        super()._fit(task)
        if task.val is not None:
            shift = task.val.features[: task.n_classes].to(self.text_weights_.dtype)
            self.text_weights_ = self.text_weights_ + 0.01 * shift


class _Noisy(ZeroShot):
    """Ignores its seed: two fits differ."""

    def _fit(self, task):
        super()._fit(task)
        noise = torch.randn(self.text_weights_.shape).to(self.text_weights_.dtype)
        self.text_weights_ = self.text_weights_ + 1e-4 * noise


class _RawErrors(ZeroShot):
    """Fails a legitimate one-image class with a raw torch error instead of a FewclipError."""

    def _fit(self, task):
        if int(torch.bincount(task.support.labels).min()) < 2:
            torch.linalg.cholesky(torch.zeros(2, 2))
        super()._fit(task)


class _WrongDtype(ZeroShot):
    """Always answers in float32, whatever its dtype."""

    def _logits(self, x):
        return super()._logits(x).float()


class _DropsAKeyword(ZeroShot):
    """Takes ``scale`` but keeps 100 whatever it is given (a keyword not passed on)."""

    def __init__(self, *, scale: float = 100.0, dtype: str = "float32", device: str = "cpu"):
        super().__init__(dtype=dtype, device=device)


class _NormalisesInPlace(ZeroShot):
    """Normalises the user's support features in place while fitting."""

    def _fit(self, task):
        task.support.features.div_(task.support.features.norm(dim=1, keepdim=True))
        super()._fit(task)


@pytest.mark.parametrize(
    ("cls", "failing_check"),
    [
        (_NormalisesInPlace, "check_fit_and_predict"),
        (_DropsAKeyword, "check_params_and_clone"),
        (_ForgetsOnSave, "check_save_load"),
        (_PeeksAtValidation, "check_validation_trait"),
        (_Noisy, "check_deterministic"),
        (_RawErrors, "check_one_shot"),
        (_WrongDtype, "check_dtypes"),
    ],
)
def test_the_suite_catches_a_broken_method(registered, cls, failing_check):
    registered(f"broken-{failing_check}", cls)
    with pytest.raises(AssertionError, match=rf"^{failing_check}\({cls.__name__}\)"):
        check_method(cls)


def test_an_unregistered_or_mistyped_method_fails_the_traits_check(registered):
    class Unregistered(ZeroShot):
        pass

    Unregistered.name = "never-registered"
    with pytest.raises(AssertionError, match="check_traits.*not registered"):
        check_method(Unregistered)

    class BadTraits(ZeroShot):
        quick_params = {"epochs": 2}  # noqa: RUF012

    registered("bad-traits", BadTraits)
    with pytest.raises(AssertionError, match="quick_params.*epochs"):
        check_method(BadTraits)
    assert issubclass(BadTraits, Method)


class _PicksTheLastPoint(methods.TipAdapter):
    """Reports the search grid but keeps its last point, whatever the validation says."""

    def _search(self, val):
        super()._search(val)
        if self._selection() is not None:
            grid, _ = self._selection()
            self.beta_, self.alpha_ = grid[-1]["beta"], grid[-1]["alpha"]


class _KeepsTheLastBest(methods.GDA):
    """Breaks ties towards the last α (``>=``), not the reference's first."""

    def _search(self, val):
        super()._search(val)
        grid = [float(a) for a in self.alphas]
        scores = []
        for a in grid:
            self.alpha_ = a
            scores.append(int((self.predict(val.features) == val.labels).sum()))
        self.alpha_ = grid[len(scores) - 1 - scores[::-1].index(max(scores))]


@pytest.mark.parametrize("cls", [_PicksTheLastPoint, _KeepsTheLastBest])
def test_the_selection_check_catches_a_wrong_pick_or_tie_rule(registered, cls):
    registered(f"broken-selection-{cls.__name__.lower()}", cls)
    with pytest.raises(AssertionError, match=r"^check_selection\("):
        check_method(cls)


class _KeepsTheLastEpoch(methods.TipAdapterF):
    """Keeps the last epoch although an earlier one scored as well on validation."""

    def _train(self, task):
        super()._train(task)
        self.best_epoch_ = self.epochs


class _KeepsTheFirstOfEqualEpochs(methods.LPPlusPlus):
    """Keeps the first of equally good epochs; the released LP++ keeps the last (``>=``)."""

    def _fit(self, task):
        super()._fit(task)
        scores = [s for _, s in self._val_history]
        if scores:
            self.best_epoch_ = self._val_history[scores.index(max(scores))][0]


@pytest.mark.parametrize("cls", [_KeepsTheLastEpoch, _KeepsTheFirstOfEqualEpochs])
def test_the_epoch_selection_check_catches_a_wrong_epoch(registered, cls):
    registered(f"broken-epochs-{cls.__name__.lower()}", cls)
    with pytest.raises(AssertionError, match=r"^check_epoch_selection\("):
        check_method(cls)


class _HidesItsSearch(methods.LinearProbe):
    """Sweeps C on validation but reports nothing: the selection check would pass vacuously."""

    def _selection(self):
        return None


class _HidesItsEpoch(methods.CrossModalLP):
    """Keeps an iteration on validation but reports nothing."""

    def _epoch_selection(self):
        return None


class _ClaimsNoChoice(methods.TipAdapter):
    """Searches on validation while declaring it chooses nothing there."""

    chooses_on_validation = frozenset()


@pytest.mark.parametrize(
    ("cls", "check"),
    [
        (_HidesItsSearch, "check_selection"),
        (_HidesItsEpoch, "check_epoch_selection"),
        (_ClaimsNoChoice, "check_selection"),
    ],
)
def test_a_choice_on_validation_must_be_reported_as_declared(registered, cls, check):
    registered(f"unreported-{cls.__name__.lower()}", cls)
    with pytest.raises(AssertionError, match=rf"^{check}\(.*(reported no|reports a)"):
        check_method(cls)


def test_the_declared_choices_are_what_the_methods_do():
    declared = {
        n: sorted(methods.get(n).chooses_on_validation)
        for n in methods.available()
        if methods.get(n).chooses_on_validation
    }
    assert declared == {
        "ape": ["search"],
        "ape-t": ["epoch"],
        "cross-modal-lp": ["epoch"],
        "gda": ["search"],
        "linear-probe": ["search"],
        "lp++": ["epoch"],
        "proker": ["search"],
        "tip-adapter": ["search"],
        "tip-adapter-f": ["epoch"],
        "tip-x": ["search"],
    }
