"""The `make demo` end-to-end demonstration (see demo/README.md)."""
