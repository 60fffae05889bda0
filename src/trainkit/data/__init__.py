"""Segmentation data: folders of images and masks as correct tensors, joint transforms, collate, checks.

Example:
    >>> import trainkit
    >>> ds = trainkit.data.SegmentationDataset("images", "masks", target="semantic")  # doctest: +SKIP
    >>> loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=trainkit.data.collate)  # doctest: +SKIP
"""

from trainkit.data import transforms
from trainkit.data._seeding import sample_rng, set_epoch
from trainkit.data.check import CheckReport, check
from trainkit.data.collate import collate, collate_instances
from trainkit.data.dataset import ClassDict, SegmentationDataset, read_class_dict
from trainkit.data.synthetic import make_shapes
from trainkit.errors import DataError, DecodeError, MaskValueError, PairingError
from trainkit.utils.dtypes import batch_dtype, to_batch_dtype  # the dtype contract collate applies

__all__ = [
    "CheckReport",
    "ClassDict",
    "DataError",
    "DecodeError",
    "MaskValueError",
    "PairingError",
    "SegmentationDataset",
    "batch_dtype",
    "check",
    "collate",
    "collate_instances",
    "make_shapes",
    "read_class_dict",
    "sample_rng",
    "set_epoch",
    "to_batch_dtype",
    "transforms",
]
