"""Reading images, ground-truth regions and the files datasets come in (the toolkit of dataset
plugins; `Region` itself is part of the public face: `from xbench_core import Region`)."""

from .files import (
    ID_COLUMNS,
    IMAGE_SUFFIXES,
    DicomHeader,
    IdList,
    ImageIndex,
    dicom_header,
    find_file,
    id_from_value,
    open_text,
    read_id_list,
    split_image_name,
)
from .images import read_image
from .regions import (
    coco_rle_area,
    decode_coco_rle,
    decode_relative_rle,
    encode_coco_rle,
)

__all__ = [
    "ID_COLUMNS", "IMAGE_SUFFIXES", "DicomHeader", "IdList", "ImageIndex",
    "coco_rle_area", "decode_coco_rle", "decode_relative_rle", "dicom_header", "encode_coco_rle",
    "find_file", "id_from_value", "open_text", "read_id_list", "read_image", "split_image_name",
]  # fmt: skip
