"""Reading images and ground-truth regions."""

from .images import read_image
from .regions import Region, decode_coco_rle, decode_relative_rle, encode_coco_rle

__all__ = ["read_image", "Region", "decode_coco_rle", "decode_relative_rle", "encode_coco_rle"]
