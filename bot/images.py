"""Where a turn's files live: <data dir>/images/<thousands>/<turn id>.<suffix>, and the guard that
keeps every stored path inside the data directory. The store keeps paths relative to it.
"""

from __future__ import annotations

from pathlib import Path

from bot.datafiles import IMAGES, UPLOADS
from bot.records import ImagePathError


class ImageFiles:
    """The data directory's image files; `Store` inherits it (its `_data_dir`)."""

    _data_dir: Path | None

    @property
    def data_dir(self) -> Path | None:
        return self._data_dir

    def _require_data_dir(self) -> Path:
        if self._data_dir is None:
            raise ImagePathError("this store has no data directory for images")
        return self._data_dir

    def new_image_path(self, turn_id: int, suffix: str = ".png", *, kept: str = IMAGES) -> Path:
        """Where a turn's image is written: <data dir>/images/<thousands>/<turn id><suffix>, or
        under uploads/ for a picture a user sent (`kept=UPLOADS`; those are pruned by age).

        The folder is created. Sharding by thousands keeps any one folder small.
        """
        if not suffix.startswith(".") or not suffix[1:].isalnum():
            raise ImagePathError(f"an image suffix is like '.png', not {suffix!r}")
        if kept not in (IMAGES, UPLOADS):
            raise ImagePathError(f"images are kept under {IMAGES!r} or {UPLOADS!r}, not {kept!r}")
        folder = self._require_data_dir() / kept / f"{turn_id // 1000:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{turn_id}{suffix}"

    def image_file(self, stored: Path | str) -> Path:
        """The absolute path of an image path stored on a turn, refusing one that leaves the data
        directory (through "..", an absolute path elsewhere or a symlink)."""
        root = self._require_data_dir()
        candidate = Path(stored)
        resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
        if not resolved.is_relative_to(root):
            raise ImagePathError(f"{str(stored)!r} is outside the data directory")
        return resolved

    def relative_image_path(self, path: Path | str) -> str:
        """How an image path is stored: relative to the data directory, with / separators."""
        return self.image_file(path).relative_to(self._require_data_dir()).as_posix()
