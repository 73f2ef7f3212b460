"""Data: sources (GSM-Symbolic, MGSM, MMLU-ProX, JSONL), pivot references, the Grain pipeline.

Importing this package does not import multilingual-gsm-symbolic or TensorFlow; the
modules that need them import them when used.
"""

from pbrl_jax.data.records import DataError, ErrorCounter, Example, normalise_lang
from pbrl_jax.data.readers import read_jsonl, read_mgsm_tsv, read_mmlu_prox
from pbrl_jax.data.pivot import (PivotItem, Reference, build_references, load_manifest,
                                 load_references, read_references_jsonl, reference_dir)
from pbrl_jax.data.pipeline import PipelineOptions, join, make_loader, repad
from pbrl_jax.data.sources import SourceData, load_source

__all__ = [
    "DataError", "ErrorCounter", "Example", "normalise_lang", "read_jsonl", "read_mgsm_tsv",
    "read_mmlu_prox", "PivotItem", "Reference", "build_references", "load_manifest",
    "load_references", "read_references_jsonl", "reference_dir", "PipelineOptions", "join",
    "make_loader", "repad", "SourceData", "load_source",
]
