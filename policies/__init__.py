"""Shipped safety policies (YAML data files; this package holds no code)."""
