"""Start-up steps that depend on how the daemon was launched (frozen bundle, PID 1)."""
