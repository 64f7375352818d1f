"""Every method documents its fitted attributes (scikit-learn's contract).

Each public attribute ending in ``_`` that ``fit`` sets must be named in an ``Attributes:``
section of the method's docstring or of a base class's (in its MRO), and every attribute that
the class's own ``Attributes:`` section names must be set after ``fit``.
"""

import inspect
import re

import pytest

from fewclip import methods

_ENTRY = re.compile(r"([A-Za-z]\w*_)[ (:,]")


def attributes_section(doc):
    """The lines of a docstring's ``Attributes:`` section (empty when there is none).

    The section starts after a line that is ``Attributes:`` (or ``Attributes: as X's, plus:``)
    and runs up to a blank line followed by a non-indented line, or the end.
    """
    lines = inspect.cleandoc(doc or "").splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip().startswith("Attributes:")]
    if not starts:
        return []
    section = []
    for i in range(starts[0] + 1, len(lines)):
        line = lines[i]
        if not line.strip() and i + 1 < len(lines) and not lines[i + 1][:1].isspace():
            break
        section.append(line)
    return section


def listed_names(doc):
    """The attribute names that start the entries of the ``Attributes:`` section."""
    section = [line for line in attributes_section(doc) if line.strip()]
    if not section:
        return set()
    indent = min(len(line) - len(line.lstrip()) for line in section)
    names = set()
    for line in section:
        if len(line) - len(line.lstrip()) == indent:
            match = _ENTRY.match(line.lstrip())
            if match:
                names.add(match.group(1))
    return names


def documented(cls, name):
    """Whether ``name`` is named in an ``Attributes:`` section of ``cls`` or a base class."""
    pattern = re.compile(rf"(?<![\w.]){re.escape(name)}[ (:,]")
    for klass in cls.__mro__:
        section = "\n".join(attributes_section(vars(klass).get("__doc__")))
        if pattern.search(section):
            return True
    return False


def fitted_attributes(method):
    return [k for k in vars(method) if k.endswith("_") and not k.startswith("_")]


@pytest.mark.parametrize("name", methods.available())
def test_fitted_attributes_are_documented(name, task):
    method = methods.create(name, **methods.get(name).quick_params).fit(task)
    cls = type(method)
    fitted = fitted_attributes(method)
    assert fitted, f"{name}: fit set no public fitted attribute"
    missing = [k for k in fitted if not documented(cls, k)]
    assert not missing, (
        f"{name}: fitted attributes {missing} are not listed in an 'Attributes:' section of "
        f"the docstring of {cls.__name__} or of a base class"
    )
    own = listed_names(vars(cls).get("__doc__"))
    assert own, f"{name}: {cls.__name__}'s docstring has no 'Attributes:' entries"
    stale = sorted(own - set(fitted))
    assert not stale, f"{name}: {cls.__name__} documents {stale}, which fit does not set"


def test_base_class_documents_its_attributes():
    assert listed_names(methods.Method.__doc__) == {"classnames_", "classes_", "n_features_in_"}


def test_section_parser():
    doc = """Summary.

    Args:
        a: the a.

    Attributes: as ``Base``'s, plus:
        keys_ (K, D) tensor: the keys, on two
            lines mentioning other_ things.
        alpha_ float: a weight.

    Trailing prose names nope_ here.
    """
    assert listed_names(doc) == {"keys_", "alpha_"}
    assert listed_names("Summary.\n\nArgs:\n    a: the a.\n") == set()
