"""Generated code: run `make generate`, never edit by hand."""
