"""One error family: every exception class fewclip defines derives from FewclipError (and from
the built-in exception a Python user would catch)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import fewclip
from fewclip.errors import FewclipError


def _fewclip_exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for mod in pkgutil.walk_packages(fewclip.__path__, "fewclip."):
        if mod.name.endswith("__main__"):
            continue
        module = importlib.import_module(mod.name)
        for name, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found[f"{obj.__module__}.{name}"] = obj
    return found


def test_every_error_class_is_a_fewclip_error() -> None:
    classes = _fewclip_exception_classes()
    assert len(classes) >= 15
    outside = [
        name
        for name, cls in classes.items()
        if not issubclass(cls, FewclipError) and not issubclass(cls, KeyboardInterrupt)
    ]
    assert outside == []


def test_errors_keep_the_builtin_bases_users_catch() -> None:
    from fewclip.data.types import DatasetError, MissingDataError
    from fewclip.methods import NotFittedError

    assert issubclass(NotFittedError, ValueError) and issubclass(NotFittedError, AttributeError)
    assert issubclass(DatasetError, ValueError) and issubclass(MissingDataError, FileNotFoundError)
