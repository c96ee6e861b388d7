"""The installed version of Habitus."""

__version__ = "0.1.0"
