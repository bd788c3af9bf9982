"""The file-system layer shared by the `/files` routes and the Filesystem service.

Nothing here knows about HTTP or Connect: Go's error wording (`errors`),
implicit directory creation (`dirs`), `EntryInfo` (`entry`) and the
temporary-inode-then-install step (`install`). Every function blocks; async
callers run it in a worker thread.
"""
