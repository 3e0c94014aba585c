"""mnistpipe: a reproducible, data-versioned MNIST classifier pipeline."""

__version__ = "0.1.0"
