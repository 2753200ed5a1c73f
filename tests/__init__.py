"""The test suite: a package, so pytest imports it as `tests.*` from the repository root (see pyproject.toml)."""
