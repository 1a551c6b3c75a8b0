"""fgad."""
