"""Semantic cache (issue 3, in progress): so far the false-hit guards, not yet wired into the path."""
