"""Small synthetic pixel arrays: phantoms for each modality and burned-in text.

Arrays are tiny (64x64 to 192x128) so that thousands of files are quick to make, yet each has
plausible values: Hounsfield-like CT numbers, MR tissue contrast, radiograph and mammogram
attenuation, an ultrasound speckle fan. Text is drawn with Pillow's bundled default font
(``ImageFont.load_default``); nothing is downloaded. Noise comes from a seeded numpy generator,
never from global random state.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# CT stored values are HU + 1024 (RescaleIntercept -1024), 12 bits stored.
CT_INTERCEPT = -1024


@cache
def _grid(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised coordinates in [-1, 1], shared by every phantom of that size."""
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    return (x - cols / 2) / (cols / 2), (y - rows / 2) / (rows / 2)


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def ct_chest_slice(rng: np.random.Generator, position: float, size: int = 64) -> np.ndarray:
    """One axial chest slice in stored values (HU + 1024); ``position`` in [0, 1] head to feet."""
    x, y = _grid(size, size)
    hu = np.full((size, size), -1000.0, dtype=np.float32)
    hu[_ellipse(x, y, 0, 0.05, 0.9, 0.7)] = 40.0  # soft tissue
    lung = 0.25 + 0.1 * np.sin(position * np.pi)  # lungs widen towards the middle of the chest
    hu[_ellipse(x, y, -0.42, 0.0, lung + 0.05, 0.45)] = -850.0
    hu[_ellipse(x, y, 0.42, 0.0, lung + 0.05, 0.45)] = -850.0
    hu[_ellipse(x, y, 0.08, 0.05, 0.18, 0.2)] = 45.0  # heart
    hu[_ellipse(x, y, 0.0, 0.55, 0.1, 0.1)] = 700.0  # vertebra
    hu += rng.normal(0.0, 12.0, hu.shape).astype(np.float32)
    return np.clip(hu - CT_INTERCEPT, 0, 4095).astype(np.uint16)


def mr_head_slice(rng: np.random.Generator, position: float, size: int = 64) -> np.ndarray:
    """One sagittal T1-like head slice, 12-bit magnitude values."""
    x, y = _grid(size, size)
    image = np.zeros((size, size), dtype=np.float32)
    scale = 0.75 + 0.2 * np.sin(position * np.pi)
    image[_ellipse(x, y, 0, 0, 0.8 * scale, 0.9 * scale)] = 300.0  # scalp and CSF
    image[_ellipse(x, y, 0, 0, 0.7 * scale, 0.8 * scale)] = 900.0  # white matter
    image[_ellipse(x, y, 0.1, 0.1, 0.2 * scale, 0.15)] = 200.0  # ventricle
    image += np.abs(rng.normal(0.0, 20.0, image.shape)).astype(np.float32)
    return np.clip(image, 0, 4095).astype(np.uint16)


def chest_radiograph(rng: np.random.Generator, lateral: bool, rows: int = 128, cols: int = 128) -> np.ndarray:
    """A 12-bit chest projection (bright bone and mediastinum, dark lungs)."""
    x, y = _grid(rows, cols)
    image = np.full((rows, cols), 300.0, dtype=np.float32)
    image[_ellipse(x, y, 0, 0.05, 0.85, 0.95)] = 2200.0
    if lateral:
        image[_ellipse(x, y, 0.0, -0.05, 0.55, 0.6)] = 900.0
        image[_ellipse(x, y, 0.55, 0.0, 0.12, 0.8)] = 3000.0  # spine behind the lungs
    else:
        image[_ellipse(x, y, -0.4, -0.05, 0.3, 0.6)] = 800.0
        image[_ellipse(x, y, 0.4, -0.05, 0.3, 0.6)] = 800.0
        image[_ellipse(x, y, 0.0, 0.0, 0.08, 0.9)] = 3000.0
    image += rng.normal(0.0, 30.0, image.shape).astype(np.float32)
    return np.clip(image, 0, 4095).astype(np.uint16)


def mammogram(rng: np.random.Generator, laterality: str, rows: int = 128, cols: int = 96) -> np.ndarray:
    """A 12-bit breast projection with the chest wall on the side the laterality implies."""
    x, y = _grid(rows, cols)
    wall = -1.0 if laterality == "R" else 1.0
    image = np.full((rows, cols), 50.0, dtype=np.float32)
    image[_ellipse(x, y, wall, 0.0, 1.2, 0.85)] = 1800.0
    image[_ellipse(x, y, wall * 0.6, 0.1, 0.25, 0.2)] = 2600.0  # a dense region
    image += rng.normal(0.0, 25.0, image.shape).astype(np.float32)
    return np.clip(image, 0, 4095).astype(np.uint16)


def ultrasound(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """An 8-bit speckled sector (the fan an abdominal probe draws)."""
    x, y = _grid(rows, cols)
    radius = np.hypot(x, y + 1.0)
    angle = np.abs(np.arctan2(x, y + 1.0))
    fan = (radius < 1.9) & (radius > 0.3) & (angle < 0.6)
    speckle = rng.rayleigh(40.0, (rows, cols)).astype(np.float32)
    image = np.where(fan, speckle + 30.0, 0.0)
    return np.clip(image, 0, 255).astype(np.uint8)


@cache
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def burn_text(
    pixels: np.ndarray, lines: list[str], left: int, top: int, value: int = 255
) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Draw ``lines`` into an 8-bit greyscale array in place; return each line with its bounding box.

    The box is ``(left, top, right, bottom)`` as Pillow measures the drawn text, clipped to the image.
    """
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    font = _font()
    boxes: list[tuple[str, tuple[int, int, int, int]]] = []
    y = top
    for line in lines:
        # Pillow annotates the box as floats; a drawn text's pixel edges are whole numbers.
        box = tuple(int(edge) for edge in draw.textbbox((left, y), line, font=font))
        draw.text((left, y), line, fill=value, font=font)
        clipped = (max(box[0], 0), max(box[1], 0), min(box[2], pixels.shape[1]), min(box[3], pixels.shape[0]))
        boxes.append((line, clipped))
        y = box[3] + 3
    pixels[...] = np.asarray(image)
    return boxes


def secondary_capture(rng: np.random.Generator, rows: int = 128, cols: int = 256) -> np.ndarray:
    """An 8-bit screen grab background: a dark frame with a faint image area below the text."""
    image = np.full((rows, cols), 16, dtype=np.uint8)
    image[64:, 32:-32] = rng.integers(40, 90, (rows - 64, cols - 64), dtype=np.uint8)
    return image
