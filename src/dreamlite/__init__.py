"""dreamlite: one small diffusion U-Net for text-to-image generation and text-guided editing."""

from dreamlite.incontext import pack, unpack
from dreamlite.models.unet import MobileUNet
from dreamlite.presets import PRESETS

__version__ = "0.1.0"
__all__ = ["MobileUNet", "PRESETS", "pack", "unpack", "__version__"]
