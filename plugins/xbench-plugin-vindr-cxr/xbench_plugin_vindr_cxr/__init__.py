"""XBench dataset plugin: VinDr-CXR (PhysioNet v1.0.0 or Kaggle VinBigData), boxes by radiologists."""

from xbench_core import DatasetSpec, Option, hookimpl

from .labels import ALL_FINDINGS

SPEC = DatasetSpec(
    name="vindr-cxr",
    summary=(
        "VinDr-CXR: 18,000 adult PA chest radiographs (DICOM) with radiologists' boxes for 22 local "
        "findings and 6 image-level labels (PhysioNet v1.0.0; or the Kaggle VinBigData train.csv)"
    ),
    factory="xbench_plugin_vindr_cxr.dataset:VinDrCXR",
    findings=ALL_FINDINGS,
    splits=("train", "test"),
    default_split="test",
    options=(
        Option(
            "root",
            "path",
            required=True,
            help="folder of the PhysioNet release (vindr-cxr/1.0.0) or of the Kaggle download",
        ),
        Option(
            "split",
            str,
            "test",
            choices=("train", "test"),
            help="train: 15,000 images, 3 readers each; test: 3,000 images, 5-reader consensus "
            "(PhysioNet only)",
        ),
        Option(
            "split_file",
            "path",
            help="CSV (image_id column) or text list of image ids to keep, e.g. a published split",
        ),
        Option(
            "readers",
            str,
            "union",
            choices=("union", "majority"),
            help="merging the 3 train readers: union = any reader; majority = at least 2 of 3 "
            "(labels) and pixels inside at least 2 readers' boxes (regions)",
        ),
        Option(
            "annotation_file",
            "path",
            help="the box CSV (.csv or .csv.gz, PhysioNet or Kaggle format) if not in the layout",
        ),
        Option(
            "image_label_file",
            "path",
            help="PhysioNet image_labels_<split>.csv if not next to the annotation file",
        ),
        Option("image_dir", "path", help="folder of <image_id>.dicom (default <root>/<split>)"),
        Option(
            "size_file",
            "path",
            help="CSV of image sizes: image_id with height,width (or rows,columns or dim0,dim1); "
            "default <root>/<split>_meta.csv when present",
        ),
        Option(
            "read_headers",
            bool,
            True,
            help="read Rows/Columns from DICOM headers (no pixels) to size regions before decoding",
        ),
    ),
)


@hookimpl
def xbench_register_datasets(register):  # noqa: ANN001, ANN201 - pluggy hook
    """Register the vindr-cxr dataset."""
    register(SPEC)
