"""hallgate: the open edge controller for the hardware in public service halls."""

__version__ = "0.1.0"
