"""SPAE: Semantic Pyramid AutoEncoder, a reproduction.

The library knows nothing of Hydra: configs instantiate the objects defined here.
"""

__version__ = "0.1.0"
