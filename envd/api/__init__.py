"""Plain HTTP routes (upstream's `api` package): health, and later files, init, envs, metrics."""
