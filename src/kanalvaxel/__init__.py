"""kanalväxel: a self-hosted channel switch for letters from Swedish public bodies."""

__version__ = "0.1.0"
