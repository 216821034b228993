"""Typed errors: every message says what went wrong and what to do next."""

from __future__ import annotations


class XBenchError(Exception):
    """Base class of every error XBench raises on purpose."""


class ConfigError(XBenchError):
    """A configuration value, option or command-line flag is wrong."""


class PluginError(XBenchError):
    """A plugin failed to load, registered a bad component, or clashes with another."""


class DataError(XBenchError):
    """A dataset file (label file, image, annotation) is missing, corrupt or malformed."""


class ImageReadError(DataError):
    """An image could not be decoded."""


class CheckpointError(XBenchError):
    """A checkpoint could not be read or does not fit the model."""


class AssetError(XBenchError):
    """A file a plugin needs (weights, vocabulary, descriptions) could not be found or fetched."""


class UnsupportedFinding(XBenchError):
    """A model cannot express a finding; it is reported as unsupported, never scored."""


class MapError(XBenchError):
    """A localization map is unusable (NaN or infinite values, wrong shape)."""
