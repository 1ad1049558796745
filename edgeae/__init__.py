"""edgeae: autoencoders as deployable learned codecs for edge devices."""

__version__ = "0.1.0"
