"""The image world's data layer: datasets, prompts and few-shot draws.

- Benchmarks (CoOp ``$DATA`` layout): ``load_benchmark(name, root)``, ``benchmark_names()``,
  ``check(root, name)``.
- Your own images: ``load_folder(root)``, ``load_manifest(path)``, ``load_hf(dataset)``;
  ``load(source, root=None)`` picks the right one.
- Prompts: ``get_prompts``, ``load_prompts``, ``PromptSet`` (see ``fewclip.data.prompts``).
- Few-shot draws: ``sample_few_shot``, ``sample_coop`` (the references, exactly) and the
  checked ``draw_*`` variants; ``write_split``/``read_split`` record every draw.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fewclip.data.benchmarks import (
    BENCHMARKS,
    IMAGENET_A_WNIDS,
    IMAGENET_CLASSNAMES,
    IMAGENET_R_WNIDS,
    IMAGENET_WNIDS,
    BenchmarkSpec,
    benchmark_names,
    get_spec,
    load_benchmark,
    read_coop_split,
)
from fewclip.data.check import CheckReport, check
from fewclip.data.folder import load_folder, load_hf, load_manifest, stratified_split
from fewclip.data.prompts import (
    DATASET_TEMPLATES,
    IMAGENET_TEMPLATES_7,
    OPENAI_IMAGENET_TEMPLATES,
    PromptError,
    PromptSet,
    get_prompts,
    load_prompts,
)
from fewclip.data.splits import (
    SPLIT_FORMAT,
    plan_dataset,
    read_split,
    resolve_split,
    save_plan,
    write_split,
)
from fewclip.data.types import (
    Dataset,
    DatasetError,
    ImageList,
    MissingDataError,
    safe_relpath,
)
from fewclip.errors import InvalidValueError, UnknownNameError, did_you_mean
from fewclip.sampling import (
    NotEnoughImagesError,
    check_shots,
    draw_coop,
    draw_fewshot_val,
    draw_support,
    group_by_label,
    sample_coop,
    sample_few_shot,
    sample_fewshot_val,
)

__all__ = [
    "BENCHMARKS",
    "DATASET_TEMPLATES",
    "IMAGENET_A_WNIDS",
    "IMAGENET_CLASSNAMES",
    "IMAGENET_R_WNIDS",
    "IMAGENET_TEMPLATES_7",
    "IMAGENET_WNIDS",
    "OPENAI_IMAGENET_TEMPLATES",
    "SPLIT_FORMAT",
    "BenchmarkSpec",
    "CheckReport",
    "Dataset",
    "DatasetError",
    "ImageList",
    "MissingDataError",
    "NotEnoughImagesError",
    "PromptError",
    "PromptSet",
    "benchmark_names",
    "check",
    "check_shots",
    "draw_coop",
    "draw_fewshot_val",
    "draw_support",
    "get_prompts",
    "get_spec",
    "group_by_label",
    "load",
    "load_benchmark",
    "load_folder",
    "load_hf",
    "load_manifest",
    "load_prompts",
    "plan_dataset",
    "read_coop_split",
    "read_split",
    "resolve_split",
    "safe_relpath",
    "sample_coop",
    "sample_few_shot",
    "sample_fewshot_val",
    "save_plan",
    "stratified_split",
    "write_split",
]


def load(
    source: str | os.PathLike[str], root: str | os.PathLike[str] | None = None, **kwargs: Any
) -> Dataset:
    """Load a dataset from a benchmark name, an image folder or a manifest.

    - a benchmark name or alias (``"caltech101"``, ``"fgvc"``, ...) with ``root`` = ``$DATA``
      (default: the ``FEWCLIP_DATA`` or ``DATA`` environment variable);
    - a folder → ``load_folder``; a ``.csv``/``.tsv``/``.jsonl`` file → ``load_manifest``.

    Extra keyword arguments go to the chosen reader.
    """
    s = os.fspath(source)
    p = Path(s).expanduser()
    if p.is_dir():
        return load_folder(p, **kwargs)
    if p.is_file() and p.suffix.lower() in (".csv", ".tsv", ".jsonl", ".ndjson"):
        return load_manifest(p, **kwargs)
    if p.is_file():
        raise DatasetError(
            f"{s}: expected an image folder or a .csv/.tsv/.jsonl manifest, found a "
            f"{p.suffix or 'suffix-less'} file"
        )
    looks_like_path = any(c in s for c in "/\\") or s.startswith((".", "~")) or bool(p.suffix)
    try:
        get_spec(s)
    except KeyError:
        if looks_like_path:
            raise MissingDataError(
                f"{s}: no such folder or file (expected an image folder such as "
                "photos/<class>/*.jpg, or a .csv/.jsonl manifest)"
            ) from None
        raise UnknownNameError(
            f"{s!r} is not a benchmark name{did_you_mean(s, benchmark_names())} and no folder "
            f"or file of that name exists here; benchmarks: {', '.join(benchmark_names())}"
        ) from None
    if root is None:
        root = os.environ.get("FEWCLIP_DATA") or os.environ.get("DATA")
        if not root:
            raise InvalidValueError(
                f"{s}: a benchmark needs the folder that holds the benchmark folders: --root "
                "on the command line, root= in Python, or the FEWCLIP_DATA environment variable"
            )
    return load_benchmark(s, root, **kwargs)
