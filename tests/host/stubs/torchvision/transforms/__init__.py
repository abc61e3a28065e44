"""Import-only stand-in (see the package docstring); `functional` has the two conversions other packs call."""
