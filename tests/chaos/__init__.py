"""The chaos runner of the e-commerce example (``python -m tests.chaos``)."""
