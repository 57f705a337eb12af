"""The semantics layer: inodes, handles, caches and name rules over the stores (no pyfuse3 here).

Modules: ``core`` (the ``Vfs`` facade: inodes, dispatch), ``names`` (name rules), ``listing``
(the listing/attribute cache with its overlay), ``nodes`` (options, inodes, handles),
``reads`` (remote reads, downloads), ``writes`` (remote writes).
"""

from .core import Vfs
from .nodes import ROOT_INO, XATTR_CONTENT_TYPE, XATTR_ETAG, XATTR_URL, XATTRS, Attr, Handle, Node, Options, StoreMount

__all__ = ["ROOT_INO", "XATTRS", "XATTR_CONTENT_TYPE", "XATTR_ETAG", "XATTR_URL", "Attr", "Handle", "Node",
           "Options", "StoreMount", "Vfs"]
