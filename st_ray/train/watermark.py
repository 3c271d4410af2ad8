"""``enable_watermark``: an invisible watermark in generated validation images.

The ``invisible-watermark`` package's DWT-DCT method embeds the 48-bit message that diffusers'
stock watermarker uses, so the usual detectors read it. Like diffusers, images under 256x256
pixels are left unmarked: the method needs that much area (a note says so once per run).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping
from typing import Any

PACKAGE = "invisible-watermark"
# The 48-bit message of diffusers' stock watermarker (public), most significant bit first.
MESSAGE = 0b101100111110110010010000011110111011000110011110
BITS = [int(bit) for bit in bin(MESSAGE)[2:]]
MIN_AREA = 256 * 256
_noted_small = False


def available() -> bool:
    return importlib.util.find_spec("imwatermark") is not None


def apply(image: Any, options: Mapping[str, Any]) -> Any:
    """``image`` (PIL) watermarked when ``enable_watermark`` is set, else as it is."""
    global _noted_small
    if not options.get("enable_watermark"):
        return image
    if image.width * image.height < MIN_AREA:
        if not _noted_small:
            _noted_small = True
            sys.stdout.write(
                f"enable_watermark: {image.width}x{image.height} images are below the "
                "watermark's 256x256 minimum and are saved unmarked\n"
            )
        return image
    import numpy as np
    from imwatermark import WatermarkEncoder
    from PIL import Image

    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", BITS)
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    marked = encoder.encode(bgr, "dwtDct")
    return Image.fromarray(np.ascontiguousarray(marked[:, :, ::-1]))


def read(image: Any) -> list[int]:
    """The 48 bits embedded in ``image`` (PIL), for checks."""
    import numpy as np
    from imwatermark import WatermarkDecoder

    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    return [int(b) for b in WatermarkDecoder("bits", len(BITS)).decode(bgr, "dwtDct")]
