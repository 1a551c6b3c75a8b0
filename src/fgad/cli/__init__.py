"""Thin click commands (fgad-train, -eval, -export, -run, -bench, -calibrate, -captions, -demo)."""
