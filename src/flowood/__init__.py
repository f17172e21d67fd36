"""flowood: normalizing flows as out-of-distribution detectors, and tools to see why they fail.

Reproduces and extends Kirichenko, Izmailov, Wilson, "Why Normalizing Flows Fail to Detect
Out-of-Distribution Data" (NeurIPS 2020).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
