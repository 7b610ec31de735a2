"""Where caches live and how their entries are named: one root, one key rule for every cache."""

import hashlib
import json
import os
import pathlib
import re

# Every cache key includes this number: bump it when anything a cache stores changes meaning
# (decoded pixels, feature layout, the synthetic drawing), so that no older entry is ever served.
FORMAT_VERSION = 5


def cache_root() -> pathlib.Path:
    """The package's cache folder: `$XDG_CACHE_HOME/mri_tfdata`, else `~/.cache/mri_tfdata`.

    Outside any workdir on purpose: every run on the same inputs finds the same entries.
    """
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base).expanduser() / "mri_tfdata"


def cache_dir(kind: str) -> pathlib.Path:
    """The folder of one kind of cache under `cache_root()`, e.g. "features" or "synthetic"."""
    if not re.fullmatch(r"[a-z][a-z_]*", kind):
        raise ValueError(f"kind={kind!r} is not a cache folder name (lowercase letters and _)")
    return cache_root() / kind


def cache_key(readable: str, **fields) -> str:
    """An entry name: `readable_name(readable)`, then `content_digest(**fields)`.

    Two calls give the same name exactly when `readable`, every field and the format version are
    equal; `readable` is only for people browsing the folder.

    Args:
      readable: a human-readable prefix, e.g. the dataset split and image size.
      **fields: JSON-serialisable values the cached content depends on.
    """
    return f"{readable_name(readable)}-{content_digest(**fields)}"


def readable_name(readable: str) -> str:
    """`readable` made filename-safe: its last 80 safe characters."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", readable).strip("_")[-80:] or "cache"


def content_digest(**fields) -> str:
    """16 hex digits of a hash of `fields` (JSON-serialisable) and FORMAT_VERSION."""
    content = json.dumps({"format": FORMAT_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(content.encode()).hexdigest()[:16]
