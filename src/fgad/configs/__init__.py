"""Built-in config variants as YAML (load them by name with fgad.config.load_config) and open_clip model configs."""
