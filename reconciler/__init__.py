"""sprites: a declarative reconciler for lightweight sandboxes."""

__version__ = "0.1.0"
