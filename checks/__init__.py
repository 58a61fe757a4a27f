"""Property-based checks: scratch against every port, finite differences, the frameworks' own
modules and the math's invariants. Run `python -m pytest checks` (or `-m attention` for a topic)."""
