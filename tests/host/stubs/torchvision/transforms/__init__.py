"""Import-only stand-in (see the package docstring)."""
