"""CoOp ``$DATA`` benchmark readers (the 11 few-shot datasets and the 4 ImageNet test sets)."""

from fewclip.data.benchmarks._imagenet import (
    IMAGENET_A_WNIDS,
    IMAGENET_CLASSNAMES,
    IMAGENET_R_WNIDS,
    IMAGENET_WNIDS,
)
from fewclip.data.benchmarks.readers import (
    list_images,
    load_benchmark,
    read_coop_split,
    read_wnid_classnames,
)
from fewclip.data.benchmarks.specs import (
    BENCHMARKS,
    CALTECH101_RENAMES,
    EUROSAT_RENAMES,
    SPLIT_SOURCE,
    BenchmarkSpec,
    benchmark_names,
    get_spec,
)

__all__ = [
    "BENCHMARKS",
    "CALTECH101_RENAMES",
    "EUROSAT_RENAMES",
    "IMAGENET_A_WNIDS",
    "IMAGENET_CLASSNAMES",
    "IMAGENET_R_WNIDS",
    "IMAGENET_WNIDS",
    "SPLIT_SOURCE",
    "BenchmarkSpec",
    "benchmark_names",
    "get_spec",
    "list_images",
    "load_benchmark",
    "read_coop_split",
    "read_wnid_classnames",
]
