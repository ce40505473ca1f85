"""kdpipe: distill a big CIFAR network into a small one, export it, and benchmark it on devices."""

__version__ = "0.1.0"
