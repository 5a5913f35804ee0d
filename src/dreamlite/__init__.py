"""dreamlite: one small diffusion U-Net for text-to-image generation and text-guided editing."""

import logging as _logging

# diffusers imports torchao when it is installed (the optional ExecuTorch exporter pulls it in). On a CPU
# build of torch, torchao then warns that its CUDA kernels cannot load, diffusers that its quantized tensor
# types cannot be imported, and torch's pytree about torchao's enums: nothing we use, on every start. Only
# those loggers are quietened (errors still show), before anything imports diffusers.
for _name in ("torchao", "diffusers.quantizers.torchao.torchao_quantizer", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)

from dreamlite.incontext import pack, unpack
from dreamlite.models.unet import MobileUNet
from dreamlite.presets import PRESETS

__version__ = "0.1.0"
__all__ = ["MobileUNet", "PRESETS", "pack", "unpack", "__version__"]
