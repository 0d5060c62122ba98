"""tinyllm: a small, fast, honest trainer for tiny GPT-style language models."""

__version__ = "0.1.0"
