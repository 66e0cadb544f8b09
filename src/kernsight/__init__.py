"""kernsight: Linux kernel tracepoints as live SQL tables for AI agents."""

__version__ = "0.1.0"
