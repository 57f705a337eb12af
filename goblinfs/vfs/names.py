"""Name rules: decoding, MediaGoblin's cleaning of new names, length limits."""

from __future__ import annotations

import errno
import logging

from werkzeug.utils import secure_filename

from ..storage import (
    NAME_MAX,
    ExactPath,
)
from .base import VfsBase
from .nodes import StoreMount

log = logging.getLogger(__name__)



class NamesMixin(VfsBase):
    """Name rules of the Vfs (mixed into it)."""

    def _decode(self, name: bytes) -> str:
        if len(name) > NAME_MAX:
            raise OSError(errno.ENAMETOOLONG, "name too long")
        return name.decode("utf-8", "surrogateescape")

    def new_name(self, store: StoreMount, name: bytes) -> str:
        """The name a new file or directory gets in the store (cleaned; strict refuses changes)."""
        raw = self._decode(name)
        cleaned = secure_filename(raw)
        if not cleaned:
            log.warning("refusing new name %r: it cleans to nothing (MediaGoblin's secure_filename)", raw)
            raise OSError(errno.EINVAL, "name cleans to nothing")
        if cleaned != raw and self.options.names == "strict":
            log.warning("refusing new name %r: names=strict and it would be stored as %r", raw, cleaned)
            raise OSError(errno.EINVAL, "name is not clean")
        return cleaned

    def _check_object_name(self, store: StoreMount, path: ExactPath) -> None:
        if store.max_name_length and len("/".join(path).encode()) > store.max_name_length:
            raise OSError(errno.ENAMETOOLONG, "object name longer than the store allows")

