"""XBench dataset plugin: COVID-19 rural opacity polygons (TCIA COVID-19-AR, Tang et al. 2020)."""

from xbench_core import DatasetSpec, Option, hookimpl

SPEC = DatasetSpec(
    name="covid-rural",
    summary=(
        "COVID-19 rural (TCIA COVID-19-AR): 221 radiographs of COVID-19 patients with manually drawn "
        "opacity polygons (ground-glass opacity, consolidation) in LabelMe format; evaluation only"
    ),
    factory="xbench_plugin_covid_rural.dataset:CovidRural",
    findings=("covid19", "ground_glass_opacity", "consolidation"),
    splits=("test",),
    default_split="test",
    options=(
        Option(
            "root",
            "path",
            required=True,
            help="covid_rural_annot/ (with jpgs/ and jpgs/jsons/) or the repository folder",
        ),
        Option(
            "split", str, "test", choices=("test",), help="the only split: all 221 annotated images"
        ),
        Option(
            "split_file", "path", help="CSV (image_id column) or text list of image stems to keep"
        ),
        Option(
            "findings",
            str,
            "covid19",
            choices=("covid19", "separate", "all"),
            help="covid19: one finding, the union of all opacity polygons; separate: "
            "ground_glass_opacity and consolidation; all: the three",
        ),
        Option("image_dir", "path", help="folder of <stem>.jpg (default: the jpgs/ folder)"),
    ),
)


@hookimpl
def xbench_register_datasets(register):  # noqa: ANN001, ANN201 - pluggy hook
    """Register the covid-rural dataset."""
    register(SPEC)
