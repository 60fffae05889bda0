"""Segmentation data: folders of images and masks, or COCO/LabelMe annotations, as correct tensors; joint
transforms, collate, checks.

Example:
    >>> import trainkit
    >>> ds = trainkit.data.SegmentationDataset("images", "masks", target="semantic")  # doctest: +SKIP
    >>> coco = trainkit.data.CocoDataset("annotations/instances_default.json", "images")  # doctest: +SKIP
    >>> unlabelled = trainkit.data.ImageDataset("photos")  # (image, path) samples, for prediction  # doctest: +SKIP
    >>> loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=trainkit.data.collate)  # doctest: +SKIP
"""

from trainkit.data import transforms
from trainkit.data._decode import read_image
from trainkit.data._seeding import sample_rng, set_epoch
from trainkit.data.check import CheckReport, check
from trainkit.data.class_dict import ClassDict, read_class_dict
from trainkit.data.coco import CocoDataset, check_coco
from trainkit.data.collate import collate, collate_instances
from trainkit.data.dataset import SegmentationDataset
from trainkit.data.images import ImageDataset
from trainkit.data.labelme import labelme_to_coco
from trainkit.data.synthetic import make_shapes
from trainkit.errors import DataError, DecodeError, MaskValueError, PairingError
from trainkit.utils.dtypes import batch_dtype, to_batch_dtype  # the dtype contract collate applies

__all__ = [
    "CheckReport",
    "ClassDict",
    "CocoDataset",
    "DataError",
    "DecodeError",
    "ImageDataset",
    "MaskValueError",
    "PairingError",
    "SegmentationDataset",
    "batch_dtype",
    "check",
    "check_coco",
    "collate",
    "collate_instances",
    "labelme_to_coco",
    "make_shapes",
    "read_class_dict",
    "read_image",
    "sample_rng",
    "set_epoch",
    "to_batch_dtype",
    "transforms",
]
