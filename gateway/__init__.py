"""tensorgate: a model serving gateway speaking the Open Inference Protocol."""

__version__ = "0.1.0"
