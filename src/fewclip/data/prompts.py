"""Prompt templates and prompt sets: the references' templates and user prompt files.

- ``DATASET_TEMPLATES``: each benchmark's single template, as CoOp's ``CUSTOM_TEMPLATES`` (and
  Tip-Adapter / CLIP-Adapter) use it.
- ``IMAGENET_TEMPLATES_7``: the 7-template ImageNet ensemble Tip-Adapter uses (CoOp's
  ``IMAGENET_TEMPLATES_SELECT``, from the CLIP notebook).
- ``OPENAI_IMAGENET_TEMPLATES``: the 80-template ensemble of the CLIP paper.
- ``load_prompts(path)``: a text file with one template per line (each holding ``{}``) or a JSON
  file: a list of templates, or a mapping class name → list of sentences (how LLM-generated
  prompts such as CuPL arrive).

A ``PromptSet`` turns class names into sentences (``sentences(classnames)``: one list per class;
``_`` in a class name becomes a space, as in the references) and records itself
(``to_dict()``/``fingerprint()``) so results can pin the prompt set they were made with.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fewclip.data.types import spaced
from fewclip.errors import FewclipError

__all__ = [
    "DATASET_TEMPLATES",
    "IMAGENET_TEMPLATES_7",
    "OPENAI_IMAGENET_TEMPLATES",
    "PromptError",
    "PromptSet",
    "get_prompts",
    "load_prompts",
]


class PromptError(FewclipError, ValueError):
    """A template or prompt file cannot be used (names the file, line or class)."""


#: Single template per benchmark (CoOp ``CUSTOM_TEMPLATES``). The ImageNet variants use ImageNet's.
DATASET_TEMPLATES: Mapping[str, str] = {
    "imagenet": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "oxford_pets": "a photo of a {}, a type of pet.",
    "stanford_cars": "a photo of a {}.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "food101": "a photo of {}, a type of food.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "sun397": "a photo of a {}.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet_v2": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
}

#: Tip-Adapter's ImageNet ensemble (CoOp ``IMAGENET_TEMPLATES_SELECT``), in the reference order.
IMAGENET_TEMPLATES_7: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

#: The 80 ImageNet templates of the CLIP paper (OpenAI's notebook), in the reference order.
OPENAI_IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)


def _check_template(t: object, where: str) -> str:
    if not isinstance(t, str):
        raise PromptError(f"{where}: a template must be a string, found {t!r}")
    if t.count("{}") != 1:
        raise PromptError(
            f"{where}: a template must contain '{{}}' exactly once (where the class name goes), "
            f"found {t!r}"
        )
    return t


@dataclass(frozen=True)
class PromptSet:
    """Class-agnostic templates and/or per-class sentences.

    Attributes:
        name: a short id recorded in results (``"coop:dtd"``, ``"imagenet-7"``,
            ``"openai-80"``, ``"file:prompts.json"``).
        templates: templates with one ``{}`` each, filled with the class name.
        per_class: class name → sentences used as they are (LLM prompts). A class found here
            uses its sentences; the others use ``templates`` (an error if there are none).
    """

    name: str
    templates: tuple[str, ...] = ()
    per_class: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "templates",
            tuple(
                _check_template(t, f"prompt set {self.name!r} template {i}")
                for i, t in enumerate(self.templates)
            ),
        )
        object.__setattr__(self, "per_class", {k: tuple(v) for k, v in self.per_class.items()})
        if not self.templates and not self.per_class:
            raise PromptError(f"prompt set {self.name!r} is empty")

    def _lookup(self, classname: str) -> tuple[str, ...] | None:
        for key in (classname, spaced(classname)):
            if key in self.per_class:
                return self.per_class[key]
        return None

    def sentences(self, classnames: Sequence[str]) -> list[list[str]]:
        """One list of sentences per class, in class order.

        Templates are filled with the class name with ``_`` turned into spaces. Raises
        ``PromptError`` naming the classes that have neither sentences nor templates. Keys of
        ``per_class`` that match no class are reported with a warning.
        """
        out: list[list[str]] = []
        missing: list[str] = []
        for c in classnames:
            own = self._lookup(c)
            if own is not None:
                if not own:
                    raise PromptError(f"prompt set {self.name!r}: class {c!r} has no sentences")
                out.append(list(own))
            elif self.templates:
                name = spaced(c)
                out.append([t.replace("{}", name) for t in self.templates])
            else:
                missing.append(c)
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise PromptError(
                f"prompt set {self.name!r} has no sentences for {len(missing)} classes: "
                f"{shown}{more}"
            )
        if self.per_class:
            known = set(classnames) | {spaced(c) for c in classnames}
            unused = [k for k in self.per_class if k not in known]
            if unused:
                warnings.warn(
                    f"prompt set {self.name!r}: {len(unused)} entries match no class name and "
                    f"are unused: {', '.join(repr(u) for u in unused[:5])}",
                    stacklevel=2,
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (templates and per-class sentences in full)."""
        return {
            "name": self.name,
            "templates": list(self.templates),
            "per_class": {k: list(v) for k, v in self.per_class.items()},
        }

    def fingerprint(self) -> str:
        """SHA-256 of ``to_dict()`` minus the name: same prompts, same fingerprint."""
        d = self.to_dict()
        d.pop("name")
        return hashlib.sha256(
            json.dumps(d, sort_keys=True, ensure_ascii=False).encode()
        ).hexdigest()


def load_prompts(path: str | os.PathLike[str]) -> PromptSet:
    """Read prompts from a file.

    - ``*.json``: a list of templates (``["a photo of a {}.", ...]``), or an object mapping a
      class name to a sentence or a list of sentences (``{"golden retriever": ["...", ...]}``).
    - anything else: text, one template per line; blank lines and lines starting with ``#`` are
      skipped; every other line must contain ``{}`` exactly once.
    """
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"prompt file not found: {path}")
    name = f"file:{path.name}"
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PromptError(f"{path}: not valid JSON ({e})") from None
        if isinstance(data, list):
            return PromptSet(
                name, tuple(_check_template(t, f"{path} entry {i}") for i, t in enumerate(data))
            )
        if isinstance(data, dict):
            per_class: dict[str, tuple[str, ...]] = {}
            for k, v in data.items():
                sents = [v] if isinstance(v, str) else v
                if not isinstance(sents, list) or not sents:
                    raise PromptError(
                        f"{path}: class {k!r}: expected a sentence or a non-empty list of "
                        f"sentences, found {v!r}"
                    )
                for j, s in enumerate(sents):
                    if not isinstance(s, str) or not s.strip():
                        raise PromptError(f"{path}: class {k!r} sentence {j}: found {s!r}")
                per_class[k] = tuple(sents)
            return PromptSet(name, (), per_class)
        raise PromptError(
            f"{path}: expected a list of templates or an object class → sentences, "
            f"found {type(data).__name__}"
        )
    templates = []
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        templates.append(_check_template(s, f"{path}:{lineno}"))
    if not templates:
        raise PromptError(f"{path}: no templates found (one per line, each with '{{}}')")
    return PromptSet(name, tuple(templates))


def get_prompts(
    spec: str | os.PathLike[str] | PromptSet = "default", dataset: str | None = None
) -> PromptSet:
    """A prompt set by name or file.

    Args:
        spec: ``"default"`` (the references' choice: ImageNet → the 7-template ensemble, other
            benchmarks → their single template, unknown datasets → ``"a photo of a {}."``),
            ``"single"`` (the dataset's single template), ``"imagenet-7"``, ``"openai-80"``, a
            template string containing ``{}``, a path to a prompt file, or a ``PromptSet``.
        dataset: benchmark name (any alias ``load_benchmark`` accepts) for ``default``/``single``.
    """
    if isinstance(spec, PromptSet):
        return spec
    s = os.fspath(spec)
    key = None
    if dataset is not None:
        from fewclip.data.benchmarks.specs import get_spec

        try:
            key = get_spec(dataset).name
        except KeyError:
            key = None
    if s == "default":
        if key == "imagenet":
            return PromptSet("imagenet-7", IMAGENET_TEMPLATES_7)
        s = "single"
    if s == "single":
        if key is None:
            return PromptSet("single:a photo of a {}.", ("a photo of a {}.",))
        return PromptSet(f"coop:{key}", (DATASET_TEMPLATES[key],))
    if s in ("imagenet-7", "imagenet7", "tip"):
        return PromptSet("imagenet-7", IMAGENET_TEMPLATES_7)
    if s in ("openai-80", "openai80", "openai"):
        return PromptSet("openai-80", OPENAI_IMAGENET_TEMPLATES)
    if "{}" in s and not Path(s).is_file():
        return PromptSet(f"single:{s}", (s,))
    if Path(s).is_file():
        return load_prompts(s)
    raise PromptError(
        f"unknown prompt set {s!r}: expected 'default', 'single', 'imagenet-7', 'openai-80', "
        "a template containing '{}', or an existing prompt file"
    )
