"""The Connect services: `process.Process` and `filesystem.Filesystem`."""
