"""Labelled image data in the one form models take: float32 NCHW in [0, 1] plus int64 labels;
labelled texts (``TextData``) split train / validation / test, by name through ``load_text_set``.

Every source (an .npz, an image folder, IDX files, the built-in sets) is turned into a
``LabelledData`` here, so nothing downstream deals with file formats. Importing this package pulls
in only numpy: Pillow, scikit-learn and mlxtend are imported by the loaders that need them, because
edge devices import ``edgeexit.data`` without having them.
"""

from edgeexit.data.builtin import (
    builtin_images,
    fashion_mnist,
    list_datasets,
    load_dataset,
    mnist_5k,
    sklearn_digits,
)
from edgeexit.data.idx import load_idx
from edgeexit.data.image_folder import load_image_folder
from edgeexit.data.npz import load_npz
from edgeexit.data.records import LabelledData
from edgeexit.data.rotten_tomatoes import load_rotten_tomatoes
from edgeexit.data.text_sets import list_text_sets, load_text_set
from edgeexit.data.texts import TextData, TextSplits
from edgeexit.data.tweets import load_tweets

__all__ = [
    "LabelledData",
    "TextData",
    "TextSplits",
    "builtin_images",
    "fashion_mnist",
    "list_datasets",
    "list_text_sets",
    "load_dataset",
    "load_idx",
    "load_image_folder",
    "load_npz",
    "load_rotten_tomatoes",
    "load_text_set",
    "load_tweets",
    "mnist_5k",
    "sklearn_digits",
]
