"""Thin entry points: parse arguments, load the config, call courier.*."""
