"""The toolkit the tests and benchmarks share; import from its modules (`from support.paths import REPO`).
pyproject.toml puts tests/ (and the repository root) on sys.path for pytest; bench scripts add it themselves."""
