"""goblinfs - MediaGoblin's media stores (local directory or OpenStack Swift) as a FUSE filesystem."""

__version__ = "0.1.0"
