"""flowood: normalizing flows as out-of-distribution detectors, and tools to see why they fail.

Reproduces and extends Kirichenko, Izmailov, Wilson, "Why Normalizing Flows Fail to Detect
Out-of-Distribution Data" (NeurIPS 2020).
"""

__version__ = "0.2.0"

__all__ = ["__version__", "OODDetector"]


def __getattr__(name: str):
    # imported on first use, so `from flowood.flows import Glow` stays light
    if name == "OODDetector":
        from flowood.ood.detector import OODDetector
        return OODDetector
    raise AttributeError(f"module 'flowood' has no attribute {name!r}")
