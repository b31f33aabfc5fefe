"""Verifiable prompt sets: schema, file formats, converters and built-in task suites."""

from cropi.data.io import dataset_fingerprint, load_prompts, save_prompts
from cropi.data.schema import PromptRecord, validate_record

__all__ = ["PromptRecord", "dataset_fingerprint", "load_prompts", "save_prompts", "validate_record"]
