"""fgad: fine-grained vision-language anomaly detection, from training to the edge."""

__version__ = "0.1.0"
