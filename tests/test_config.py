"""`build_config`: defaults, unknown and mistyped keys with suggestions, `--set NAME.KEY=VALUE`,
the fixed threshold grid; and `Option.coerce` for every option type."""

from __future__ import annotations

import pytest

from xbench_core import plugins
from xbench_core.engine.config import build_config, load_yaml, parse_set
from xbench_core.errors import ConfigError
from xbench_core.plugins import get_registry
from xbench_core.types import DatasetSpec, Option


@pytest.fixture
def registry(monkeypatch):
    """The built-in components only (installed plugins left out, so the tests do not depend on
    what else is installed)."""
    monkeypatch.setenv("XBENCH_PLUGINS", "xbench-no-such-distribution")
    monkeypatch.delenv("XBENCH_DISABLE_PLUGINS", raising=False)
    reg = get_registry(refresh=True)
    yield reg
    plugins._cache.clear()


# ---- defaults ----------------------------------------------------------------------------------
def test_defaults(registry):
    cfg = build_config({}, registry)
    assert [d.name for d in cfg.datasets] == ["phantom"]
    assert cfg.datasets[0].options == {"size": 200, "seed": 0, "resolution": 512, "split": "test"}
    assert [m.name for m in cfg.models] == ["random", "center"]
    assert cfg.models[0].options == {"seed": 0} and cfg.models[1].options == {"sigma": 0.25}
    assert cfg.explainers == ["native"]
    assert cfg.metrics is None
    assert (cfg.device, cfg.precision, cfg.batch_size, cfg.workers) == ("auto", "fp32", 8, 0)
    assert (cfg.limit, cfg.seed, cfg.fixed_threshold, cfg.eval_size) == (None, 0, 0.5, None)
    assert cfg.save_maps is True and cfg.fail_fast is False and cfg.out is None
    d = cfg.as_dict()
    assert d["grounding"] == {"fixed_threshold": 0.5, "eval_size": None, "protocol": {"name": "xbench"}, "pointing": "share"}
    assert d["datasets"] == [{"name": "phantom", "size": 200, "seed": 0, "resolution": 512, "split": "test"}]


def test_a_full_config(registry, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "out: runs/x\ndevice: cpu\nprecision: bf16\nbatch_size: 4\nworkers: 2\nlimit: 10\nseed: 3\n"
        "datasets:\n  - name: phantom\n    size: 12\n    resolution: 64\n"
        "models: [random, {name: center, sigma: 0.1}]\n"
        "explainers: native\nmetrics: dice, auroc\n"
        "grounding: {fixed_threshold: 0.3, eval_size: 256}\nsave_maps: false\nfail_fast: true\n"
    )
    cfg = build_config(load_yaml(path), registry)
    assert cfg.out == "runs/x" and cfg.device == "cpu" and cfg.precision == "bf16"
    assert (cfg.batch_size, cfg.workers, cfg.limit, cfg.seed) == (4, 2, 10, 3)
    assert cfg.datasets[0].options["size"] == 12 and cfg.datasets[0].options["resolution"] == 64
    assert [m.name for m in cfg.models] == ["random", "center"] and cfg.models[1].options == {"sigma": 0.1}
    assert cfg.explainers == ["native"] and cfg.metrics == ["dice", "auroc"]
    assert cfg.fixed_threshold == 0.3 and cfg.eval_size == 256
    assert cfg.save_maps is False and cfg.fail_fast is True


def test_overrides_from_the_command_line(registry):
    cfg = build_config({"batch_size": 2}, registry, overrides={"batch_size": 16, "device": None})
    assert cfg.batch_size == 16 and cfg.device == "auto"


# ---- unknown and mistyped keys -----------------------------------------------------------------
def test_unknown_top_level_key_suggests(registry):
    with pytest.raises(ConfigError, match=r"unknown config key 'batchsize'; did you mean 'batch_size'\?"):
        build_config({"batchsize": 4}, registry)
    with pytest.raises(ConfigError, match=r"'dataset'; did you mean 'datasets'\?"):
        build_config({"dataset": "phantom"}, registry)


def test_unknown_dataset_and_model_options_suggest(registry):
    with pytest.raises(ConfigError, match=r"phantom: unknown option 'sise'; did you mean 'size'\?"):
        build_config({"datasets": [{"name": "phantom", "sise": 3}]}, registry)
    with pytest.raises(ConfigError, match=r"center: unknown option 'sigmas'; did you mean 'sigma'\?.*valid options: sigma"):
        build_config({"models": [{"name": "center", "sigmas": 0.3}]}, registry)


def test_mistyped_option_names_it(registry):
    with pytest.raises(ConfigError, match=r"phantom\.size must be a int, got 'abc' \(number of images\)"):
        build_config({"datasets": [{"name": "phantom", "size": "abc"}]}, registry)
    with pytest.raises(ConfigError, match=r"center\.sigma must be a float"):
        build_config({"models": [{"name": "center", "sigma": "wide"}]}, registry)
    with pytest.raises(ConfigError, match=r"phantom\.split must be one of test; got 'train'"):
        build_config({"datasets": [{"name": "phantom", "split": "train"}]}, registry)


@pytest.mark.parametrize(
    "data, pattern",
    [
        ({"batch_size": "many"}, "batch_size must be a int"),
        ({"batch_size": 2.5}, "batch_size must be a int"),
        ({"batch_size": True}, "batch_size must be a int"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"workers": -1}, "workers must be >= 0, got -1"),
        ({"fail_fast": "sometimes"}, "fail_fast must be a bool, got 'sometimes'"),
        ({"save_maps": 1}, "save_maps must be a bool"),
        ({"limit": 0}, "limit must be >= 1"),
        ({"precision": "fp8"}, "precision must be one of fp32, bf16, fp16"),
        ({"grounding": {"fixed_treshold": 0.5}}, "unknown grounding key 'fixed_treshold'; did you mean 'fixed_threshold'"),
        ({"grounding": 0.5}, "grounding must be a mapping"),
        ({"grounding": {"eval_size": "big"}}, "grounding.eval_size must be a int"),
        ({"datasets": [{"root": "/x"}]}, "each entry of datasets needs a 'name'"),
    ],
)
def test_top_level_value_errors(registry, data, pattern):
    with pytest.raises(ConfigError, match=pattern.replace(".", r"\.").replace("(", r"\(")):
        build_config(data, registry)


def test_unknown_component_names_suggest(registry):
    with pytest.raises(ConfigError, match=r"no dataset named 'phantm'\. Did you mean 'phantom'\?"):
        build_config({"datasets": ["phantm"]}, registry)
    with pytest.raises(ConfigError, match=r"no model named 'randon'\. Did you mean 'random'\?"):
        build_config({"models": ["randon"]}, registry)
    with pytest.raises(ConfigError, match=r"no explainer named 'nativ'\. Did you mean 'native'\?"):
        build_config({"explainers": ["nativ"]}, registry)
    with pytest.raises(ConfigError, match=r"no metric named 'dise'\. Did you mean 'dice'\?"):
        build_config({"metrics": "dise"}, registry)


# ---- --set -------------------------------------------------------------------------------------
def test_parse_set_values():
    out = parse_set(
        ["a.size=12", "a.ratio=0.5", "a.flag=true", "b.path=/w/ckpt.pth", "b.list=[1, 2]",
         "b.empty=", "b.none=null", "b.text=hello world", "b.eq=x=y", "b.dotted.key=1"]
    )
    assert out["a"] == {"size": 12, "ratio": 0.5, "flag": True}
    assert out["b"]["path"] == "/w/ckpt.pth" and out["b"]["list"] == [1, 2]
    assert out["b"]["empty"] == "" and out["b"]["none"] == "null"
    assert out["b"]["text"] == "hello world" and out["b"]["eq"] == "x=y"
    assert out["b"]["dotted.key"] == 1
    assert parse_set([]) == {} and parse_set(None) == {}  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["size=3", "phantom.size", "phantom", "=3"])
def test_parse_set_malformed(bad):
    with pytest.raises(ConfigError, match="--set expects NAME.KEY=VALUE"):
        parse_set([bad])


def test_set_options_are_validated_against_the_component(registry):
    cfg = build_config({}, registry, sets=["phantom.size=7", "center.sigma=0.5", "random.seed=3"])
    assert cfg.datasets[0].options["size"] == 7
    assert cfg.models[1].options["sigma"] == 0.5 and cfg.models[0].options["seed"] == 3
    # --set overrides the file
    cfg = build_config({"datasets": [{"name": "phantom", "size": 3}]}, registry, sets=["phantom.size=9"])
    assert cfg.datasets[0].options["size"] == 9
    with pytest.raises(ConfigError, match=r"phantom\.size must be a int, got 'abc'"):
        build_config({}, registry, sets=["phantom.size=abc"])
    with pytest.raises(ConfigError, match=r"phantom: unknown option 'sizes'; did you mean 'size'\?"):
        build_config({}, registry, sets=["phantom.sizes=3"])


def test_set_with_an_unknown_name(registry):
    with pytest.raises(ConfigError, match=r"--set names 'phantm'.*did you mean 'phantom'\?.*this run has: center, native, phantom, random"):
        build_config({}, registry, sets=["phantm.size=3"])
    # a component that exists but is not in this run is not accepted either
    with pytest.raises(ConfigError, match="'center', which is not a dataset, model or explainer of this run"):
        build_config({"models": ["random"]}, registry, sets=["center.sigma=0.1"])


# ---- grounding threshold -----------------------------------------------------------------------
@pytest.mark.parametrize("t", [0.0, 0.01, 0.29, 0.3, 0.5, 0.57, 0.99, 1.0, "0.25", 1])
def test_fixed_threshold_on_the_grid(registry, t):
    cfg = build_config({"grounding": {"fixed_threshold": t}}, registry)
    assert cfg.fixed_threshold == pytest.approx(float(t))


@pytest.mark.parametrize("t", [0.555, 0.001, 1.01, -0.01, 0.123])
def test_fixed_threshold_off_the_grid(registry, t):
    with pytest.raises(ConfigError, match="on the 0.01 grid"):
        build_config({"grounding": {"fixed_threshold": t}}, registry)


def test_fixed_threshold_not_a_number(registry):
    with pytest.raises(ConfigError, match="grounding.fixed_threshold must be a float"):
        build_config({"grounding": {"fixed_threshold": "half"}}, registry)


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_yaml(lst)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_yaml(empty) == {}


@pytest.mark.parametrize("text, expect", [("'no'", False), ("'false'", False), ("'off'", False),
                                          ("'yes'", True), ("'true'", True), ("no", False), ("false", False)])
def test_quoted_booleans_mean_what_they_say(registry, tmp_path, text, expect):
    """Issue 16 item 1: `fail_fast: 'no'` was bool('no') = True; core keys coerce like options."""
    path = tmp_path / "run.yaml"
    path.write_text(f"fail_fast: {text}\nsave_maps: {text}\nimage_cache: {text}\n")
    cfg = build_config(load_yaml(path), registry)
    assert cfg.fail_fast is expect and cfg.save_maps is expect
    assert (cfg.image_cache is not None) is expect


def test_option_ranges():
    """Issue 16 item 9: options declare their ranges; NaN and infinity are not numbers of a range."""
    size = Option("size", int, 200, help="images", min=1)
    assert size.coerce("3", "phantom") == 3
    with pytest.raises(ConfigError, match=r"^phantom\.size must be >= 1, got 0 \(images\)$"):
        size.coerce(0, "phantom")
    sigma = Option("sigma", float, 0.25, min=0, max=10)
    for bad in ("nan", float("inf"), "-inf"):
        with pytest.raises(ConfigError, match=r"center\.sigma must be a finite number"):
            sigma.coerce(bad, "center")
    with pytest.raises(ConfigError, match=r"center\.sigma must be >= 0 and <= 10, got 11\.0"):
        sigma.coerce(11, "center")
    assert Option("x", float, finite=False).coerce("inf", "m") == float("inf")


# ---- Option.coerce -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, expect",
    [(True, True), (False, False), ("true", True), ("Yes", True), ("on", True), ("1", True),
     ("false", False), ("NO", False), ("off", False), (" 0 ", False)],
)
def test_coerce_bool(value, expect):
    assert Option("flag", bool).coerce(value, "m") is expect


@pytest.mark.parametrize("value", ["maybe", 1, 0, 2.0, [True]])
def test_coerce_bool_errors(value):
    with pytest.raises(ConfigError, match=r"m\.flag must be a bool"):
        Option("flag", bool).coerce(value, "m")


def test_coerce_int_and_float():
    i = Option("n", int, help="how many")
    assert i.coerce(3, "m") == 3 and i.coerce("42", "m") == 42 and i.coerce(4.0, "m") == 4
    assert isinstance(i.coerce(4.0, "m"), int)
    for bad in ("4.5", 4.5, True, "abc", [1]):
        with pytest.raises(ConfigError, match=r"m\.n must be a int, got .* \(how many\)"):
            i.coerce(bad, "m")
    f = Option("x", float)
    assert f.coerce(1, "m") == 1.0 and isinstance(f.coerce(1, "m"), float)
    assert f.coerce("2.5", "m") == 2.5 and f.coerce("1e-3", "m") == 0.001
    for bad in ("abc", False, [0.5]):
        with pytest.raises(ConfigError, match=r"m\.x must be a float"):
            f.coerce(bad, "m")


def test_coerce_list_path_str_dict():
    lst = Option("items", list)
    assert lst.coerce("a, b,,c ", "m") == ["a", "b", "c"]
    assert lst.coerce(["x", 1], "m") == ["x", 1] and lst.coerce(("x",), "m") == ("x",)
    with pytest.raises(ConfigError, match=r"m\.items must be a list"):
        lst.coerce(3, "m")
    p = Option("root", "path")
    assert p.coerce("/data/x", "m") == "/data/x"
    from pathlib import Path

    assert p.coerce(Path("/data/y"), "m") == "/data/y"
    with pytest.raises(ConfigError, match=r"m\.root must be a path"):
        Option("root", "path", choices=None).coerce(object.__new__(_Unprintable), "m")
    assert Option("s", str).coerce(12, "m") == "12"
    d = Option("d", dict)
    assert d.coerce({"a": 1}, "m") == {"a": 1}
    with pytest.raises(ConfigError, match=r"m\.d must be a dict"):
        d.coerce("a=1", "m")
    assert Option("s", str).coerce(None, "m") is None


class _Unprintable:
    def __str__(self) -> str:
        raise TypeError("no text form")


def test_coerce_choices():
    o = Option("variant", str, "base", choices=("base", "large"))
    assert o.coerce("large", "m") == "large"
    with pytest.raises(ConfigError, match=r"m\.variant must be one of base, large; got 'huge'"):
        o.coerce("huge", "m")
    n = Option("res", int, 512, choices=(512, 1024))
    assert n.coerce("1024", "m") == 1024  # converted before the choice is checked
    with pytest.raises(ConfigError, match="must be one of 512, 1024"):
        n.coerce(256, "m")


def test_resolve_options_required_and_defaults():
    spec = DatasetSpec(
        name="d", summary="s", factory=dict,
        options=(Option("root", "path", required=True, help="the data folder"), Option("k", int, 5)),
    )
    with pytest.raises(ConfigError, match=r"d: option 'root' is required \(the data folder\).*--set d\.root=VALUE"):
        spec.resolve_options({})
    assert spec.resolve_options({"root": "/r"}) == {"root": "/r", "k": 5}
    assert spec.resolve_options({"root": "/r", "k": None}) == {"root": "/r", "k": 5}
    assert spec.build(root="/r", k="7") == {"root": "/r", "k": 7}
