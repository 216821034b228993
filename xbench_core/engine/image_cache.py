"""An optional on-disk cache of decoded images, for repeated runs over the same dataset.

Decoding is the one cost a run pays per image whatever the models (a large or compressed DICOM
takes far longer to decode than to read back as an array). With `image_cache` set, the loader
workers keep each decoded image as a `.npy` file (float32, exactly what the dataset decoded, or
downscaled to `max_side` when that is set) under

    <dir>/<key[:2]>/<key>.npy

where the key is a BLAKE2b hash of the image file's content, the dataset's class and decoding
options (paths excluded: the same files elsewhere hit the same entries), `max_side` and the cache
format. A changed file gets a new key; moving the data keeps its entries. Entries are written
atomically (a reader never sees half a file), a corrupt entry is decoded again, and when the folder
grows past `max_gb` the least recently used entries are deleted (a hit refreshes an entry's time).

`max_side` changes what models see, so it is part of a run's evaluation identity; the cache itself
(without `max_side`) changes no result: a hit returns the array the dataset decoded, bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..types import BOOL_WORDS as _BOOL_WORDS
from ..types import Option

FORMAT = 1  # bump when the stored arrays change meaning
CHUNK = 1 << 20


@dataclass(frozen=True)
class CacheSettings:
    """What `image_cache` in a run config says: where, how large, and an optional size cap."""

    directory: str
    max_gb: float = 20.0
    max_side: int | None = None

    @classmethod
    def parse(cls, value: Any) -> CacheSettings | None:
        """`image_cache: true | false | PATH | {dir, max_gb, max_side}` -> settings (None: off)."""
        from ..assets import xbench_home

        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:  # 'no' is not a folder
            value = Option("image_cache", bool).coerce(value)
        if value in (None, False):
            return None
        default_dir = str(xbench_home() / "image-cache")
        if value is True:
            return cls(default_dir)
        if isinstance(value, str):
            return cls(str(Path(value).expanduser()))
        if not isinstance(value, dict):
            raise ConfigError(f"image_cache must be true, a folder or a mapping {{dir, max_gb, max_side}}, got {value!r}")
        unknown = set(value) - {"dir", "max_gb", "max_side"}
        if unknown:
            raise ConfigError(f"unknown image_cache key(s) {', '.join(sorted(unknown))} (valid: dir, max_gb, max_side)")
        max_gb = value.get("max_gb", cls.max_gb)
        max_side = value.get("max_side")
        if isinstance(max_gb, bool) or not isinstance(max_gb, (int, float)) or max_gb <= 0:
            raise ConfigError(f"image_cache.max_gb must be a positive number of gigabytes, got {max_gb!r}")
        if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 16):
            raise ConfigError(f"image_cache.max_side must be an integer of at least 16 pixels, got {max_side!r}")
        return cls(str(Path(value.get("dir") or default_dir).expanduser()), float(max_gb), max_side)

    def as_dict(self) -> dict[str, Any]:
        return {"dir": self.directory, "max_gb": self.max_gb, "max_side": self.max_side}


class ImageCache:
    """Decoded images of one dataset on disk (see the module docstring); safe across processes."""

    def __init__(self, settings: CacheSettings, dataset: Any, options: dict[str, Any]) -> None:
        self.settings = settings
        self.root = Path(settings.directory)
        self.max_bytes = int(settings.max_gb * 1024**3)
        self.dataset = dataset
        kind = type(dataset)
        identity = {"class": f"{kind.__module__}.{kind.__qualname__}", "options": options,
                    "max_side": settings.max_side, "format": FORMAT}
        self._salt = json.dumps(identity, sort_keys=True, default=str).encode()
        self._used: int | None = None  # bytes in the folder, as this process last counted them
        self.hits = self.misses = 0

    @classmethod
    def for_dataset(cls, settings: CacheSettings, dataset: Any, spec: Any, options: dict[str, Any]) -> ImageCache:
        """The cache of a dataset built from `spec` with `options`: its path options left out of
        the key (the same files in another folder hit the same entries)."""
        resolved = spec.resolve_options(options)
        paths = {o.name for o in spec.options if o.type == "path"}
        return cls(settings, dataset, {k: v for k, v in resolved.items() if k not in paths})

    def load(self, sample: Any) -> np.ndarray:
        """The sample's decoded image: from the cache, or decoded (and capped) then stored."""
        path = sample.meta.get("path") if sample.meta else None
        if path is None or not Path(path).is_file():
            return self._decode(sample)  # nothing to key on; the dataset reports a missing file
        entry = self._entry(Path(path))
        try:
            image = np.load(entry, allow_pickle=False)
            if image.dtype != np.float32 or image.ndim != 2:
                raise ValueError(f"unexpected array {image.dtype} {image.shape}")
            os.utime(entry)  # least recently used goes first
            self.hits += 1
            return image
        except FileNotFoundError:
            pass
        except Exception:  # a corrupt or foreign entry: decode again and replace it
            entry.unlink(missing_ok=True)
        image = self._decode(sample)
        self.misses += 1
        self._store(entry, image)
        return image

    def _decode(self, sample: Any) -> np.ndarray:
        image = self.dataset.load_image(sample)
        side = self.settings.max_side
        if side is not None and max(image.shape[:2]) > side:
            from ..geometry import resize

            h, w = image.shape[:2]
            f = side / max(h, w)
            image = resize(image, (max(1, round(h * f)), max(1, round(w * f))), method="area")
        return np.ascontiguousarray(image, dtype=np.float32)

    def _entry(self, path: Path) -> Path:
        digest = hashlib.blake2b(self._salt, digest_size=20)
        with open(path, "rb") as fh:
            while block := fh.read(CHUNK):
                digest.update(block)
        key = digest.hexdigest()
        return self.root / key[:2] / f"{key}.npy"

    def _store(self, entry: Path, image: np.ndarray) -> None:
        size = image.nbytes + 128
        if size > self.max_bytes:
            return
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp = entry.with_name(f".{entry.stem}.{os.getpid()}.tmp")
            with open(tmp, "wb") as fh:
                np.save(fh, image, allow_pickle=False)
            os.replace(tmp, entry)
        except OSError:  # a full or read-only disk costs speed, never the run
            return
        if self._used is None:
            self._used = self._scan()[1]
        else:
            self._used += size
        if self._used > self.max_bytes:
            self._evict()

    def _scan(self) -> tuple[list[tuple[float, int, Path]], int]:
        files = []
        for p in self.root.glob("*/*.npy"):
            try:
                st = p.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, p))
        return files, sum(f[1] for f in files)

    def _evict(self) -> None:
        """Delete the least recently used entries down to 90% of the budget."""
        files, used = self._scan()
        for _, size, p in sorted(files):
            if used <= 0.9 * self.max_bytes:
                break
            p.unlink(missing_ok=True)
            used -= size
        self._used = used
