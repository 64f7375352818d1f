"""Image features: batched extraction with augmented views, and the on-disk feature store."""

from fewclip.features.extract import (
    PLAIN,
    ExtractResult,
    dataset_fingerprint,
    extract,
    image_key_record,
)
from fewclip.features.store import (
    CorruptEntryError,
    EntryInfo,
    EntryWriter,
    FeatureStore,
    entry_key,
)

__all__ = [
    "PLAIN",
    "CorruptEntryError",
    "EntryInfo",
    "EntryWriter",
    "ExtractResult",
    "FeatureStore",
    "dataset_fingerprint",
    "entry_key",
    "extract",
    "image_key_record",
]
