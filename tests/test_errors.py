"""One error family: every exception class fewclip defines derives from FewclipError (and from
the built-in exception a Python user would catch)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import fewclip
from fewclip.errors import FewclipError, count_of


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

    assert issubclass(NotFittedError, ValueError)
    assert issubclass(NotFittedError, AttributeError)
    assert issubclass(DatasetError, ValueError)
    assert issubclass(MissingDataError, FileNotFoundError)


def test_every_raise_in_fewclip_uses_a_fewclip_error() -> None:
    """A deliberate error is a FewclipError (the CLI reports anything else as a bug)."""
    import ast
    from pathlib import Path

    import fewclip.errors as errors

    builtin = {"ValueError", "TypeError", "KeyError", "FileNotFoundError", "IndexError",
               "MemoryError", "RuntimeError", "ImportError", "OSError"}  # fmt: skip
    root = Path(fewclip.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                name = func.id if isinstance(func, ast.Name) else None
                if name in builtin:
                    offenders.append(f"{path.relative_to(root)}:{node.lineno} {name}")
    assert offenders == []
    assert issubclass(errors.InvalidValueError, ValueError)


def test_the_cli_reports_a_bug_in_one_line_with_exit_70(monkeypatch, capsys) -> None:
    from fewclip.cli import fit_cmds, main

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(fit_cmds, "_method_name", broken)
    code = main(["fit", "-m", "zero-shot", "-d", "x", "-o", "y"])
    err = capsys.readouterr().err
    assert code == 70
    assert "internal error, a bug: ZeroDivisionError: division by zero" in err
    assert "--debug" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    code = main(["--debug", "fit", "-m", "zero-shot", "-d", "x", "-o", "y"])
    assert code == 70
    assert "Traceback" in capsys.readouterr().err


def test_count_of_is_plural_unless_one() -> None:
    assert [count_of(n, "image") for n in (0, 1, 2)] == ["0 images", "1 image", "2 images"]
