"""The NF model families."""
