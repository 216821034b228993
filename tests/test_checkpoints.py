"""Safe checkpoint reading: formats, containers, key handling, strict loading, malicious pickles."""

from __future__ import annotations

import builtins
import importlib
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from xbench_core.checkpoints import (
    Placeholder,
    Unpickler,
    convert_checkpoint,
    load_checkpoint,
    load_state_dict_strict,
    read_pickle_safely,
)
from xbench_core.errors import CheckpointError

FORMATS = ("zip", "legacy", "pickle")


def save(obj: Any, path: Path, fmt: str) -> Path:
    """Write `obj` as a torch zip archive, a legacy torch file or a plain pickle."""
    if fmt == "pickle":
        with open(path, "wb") as handle:
            pickle.dump(obj, handle)
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


def weights() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "encoder.weight": torch.randn(4, 3, generator=generator),
        "encoder.bias": torch.randn(4, generator=generator),
        "head.weight": torch.randn(2, 4, generator=generator).to(torch.float16),
        "position_ids": torch.arange(7),
    }


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype, key
        assert torch.equal(got[key], tensor), key


class Reduce:
    """Pickles as `func(*args)`: what a malicious checkpoint plants."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def payloads(folder: Path) -> tuple[dict[str, Reduce], dict[str, Path]]:
    """Objects whose unpickling would create a marker file each, by four different routes."""
    markers = {name: folder / f"pwned-{name}" for name in ("system", "open", "eval", "subprocess")}
    objects = {
        "system": Reduce(os.system, f"touch {markers['system']}"),
        "open": Reduce(builtins.open, str(markers["open"]), "w"),
        "eval": Reduce(builtins.eval, f"open({str(markers['eval'])!r}, 'w')"),
        "subprocess": Reduce(subprocess.call, ["touch", str(markers["subprocess"])]),
    }
    return objects, markers


def test_payload_is_live_under_plain_pickle(tmp_path: Path) -> None:
    # Control: the planted objects really do act when unpickled the ordinary way.
    objects, markers = payloads(tmp_path)
    pickle.loads(pickle.dumps(objects["open"])).close()
    assert markers["open"].exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_malicious_pickle_runs_nothing_and_tensors_load(tmp_path: Path, fmt: str) -> None:
    objects, markers = payloads(tmp_path)
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = save({"model": weights(), "payload": objects, "array": array}, tmp_path / "x.pt", fmt)

    tensors = load_checkpoint(path)
    content = read_pickle_safely(path)

    assert not [name for name, marker in markers.items() if marker.exists()]
    assert_same(tensors, weights())
    np.testing.assert_array_equal(content["array"], array)
    planted = content["payload"]
    expected = {
        "system": (os.system.__module__, "system"),
        "open": (builtins.open.__module__, "open"),
        "eval": ("builtins", "eval"),
        "subprocess": ("subprocess", "call"),
    }
    for name, (module, function) in expected.items():
        assert isinstance(planted[name], Placeholder), name
        assert (type(planted[name]).pickled_module, type(planted[name]).pickled_name) == (
            module,
            function,
        )
    assert planted["system"].args == (f"touch {markers['system']}",)
    assert not callable(planted["system"])


def test_find_class_never_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    Unpickler(io.BytesIO(b"")).find_class("torch", "float32")  # build the allow-list first
    imported: list[str] = []
    real_import, real_import_module = builtins.__import__, importlib.import_module

    def recording_import(name: str, *args: Any, **kwargs: Any) -> Any:
        imported.append(name)
        return real_import(name, *args, **kwargs)

    def recording_import_module(name: str, *args: Any, **kwargs: Any) -> Any:
        imported.append(name)
        return real_import_module(name, *args, **kwargs)

    unpickler = Unpickler(io.BytesIO(b""))
    monkeypatch.setattr(builtins, "__import__", recording_import)
    monkeypatch.setattr(importlib, "import_module", recording_import_module)
    imported.clear()  # monkeypatch itself may import; only find_class is under test
    try:
        system = unpickler.find_class("os", "system")
        module_class = unpickler.find_class("no_such_package.sub", "Thing")
        real = unpickler.find_class("torch._utils", "_rebuild_tensor_v2")
    finally:
        monkeypatch.undo()

    assert imported == []
    assert issubclass(system, Placeholder) and system.qualified_name() == "os.system"
    assert issubclass(module_class, Placeholder)
    assert unpickler.find_class("os", "system") is system  # one class per name and file
    assert real is torch._utils._rebuild_tensor_v2


def test_lightning_checkpoint_with_unimportable_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site"
    package.mkdir()
    source = package / "fake_omegaconf_xb.py"
    source.write_text(
        textwrap.dedent(
            """
            class DictConfig:
                def __init__(self, content):
                    self._content = dict(content)
                    self._flags = {"readonly": True}
            """
        )
    )
    monkeypatch.syspath_prepend(str(package))
    fake = importlib.import_module("fake_omegaconf_xb")
    state_dict = {f"model.{key}": value for key, value in weights().items()}
    checkpoint = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.1.0",
        "state_dict": state_dict,
        "hyper_parameters": {"cfg": fake.DictConfig({"lr": 0.001, "variant": "base"})},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.001}]}],
        "lr_schedulers": [],
    }
    path = tmp_path / "last.ckpt"
    torch.save(checkpoint, path)
    # Make the class unimportable: a loader that imported names from the file would now fail.
    del sys.modules["fake_omegaconf_xb"]
    source.unlink()
    importlib.invalidate_caches()
    with pytest.raises(ModuleNotFoundError):
        torch.load(path, weights_only=False)

    tensors = load_checkpoint(path, strip_prefixes=["model."])
    content = read_pickle_safely(path)

    assert "fake_omegaconf_xb" not in sys.modules
    assert_same(tensors, weights())
    config = content["hyper_parameters"]["cfg"]
    assert type(config).qualified_name() == "fake_omegaconf_xb.DictConfig"
    assert config.state == {
        "_content": {"lr": 0.001, "variant": "base"},
        "_flags": {"readonly": True},
    }
    assert content["epoch"] == 3


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(3, 4)
        self.norm = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 2)
        self.register_buffer("scratch", torch.zeros(5), persistent=False)


@pytest.mark.parametrize("fmt", ("zip", "legacy"))
def test_whole_pickled_module_gives_its_state_dict(tmp_path: Path, fmt: str) -> None:
    model = TwoLayers()
    path = save({"model": model, "epoch": 1}, tmp_path / "whole.pt", fmt)

    tensors = load_checkpoint(path)

    want = model.state_dict()
    assert "scratch" not in tensors
    assert_same(tensors, dict(want))


@pytest.mark.parametrize("fmt", FORMATS)
def test_parameters_and_shared_storage(tmp_path: Path, fmt: str) -> None:
    model = TwoLayers()
    base = torch.arange(12.0)
    content = {
        "params": OrderedDict(model.named_parameters()),
        "view_a": base[:6].view(2, 3),
        "view_b": base[6:],
    }
    path = save(content, tmp_path / "p.pt", fmt)

    params = load_checkpoint(path, container="params")
    views = load_checkpoint(path, drop=["params"])

    assert_same(params, {k: v.detach() for k, v in model.named_parameters()})
    assert all(type(t) is torch.Tensor and not t.requires_grad for t in params.values())
    assert_same(views, {"view_a": base[:6].view(2, 3), "view_b": base[6:]})


class TaggedTensor(torch.Tensor):
    """A tensor subclass, as some training code saves; its class is not allow-listed."""


@pytest.mark.parametrize("fmt", FORMATS)
def test_tensor_subclass_loads_as_plain_tensor(tmp_path: Path, fmt: str) -> None:
    tagged = torch.arange(6.0).reshape(2, 3).as_subclass(TaggedTensor)
    tagged.note = "kept by torch as state"
    path = save({"w": tagged, "plain": torch.ones(2)}, tmp_path / "s.pt", fmt)

    tensors = load_checkpoint(path)

    assert type(tensors["w"]) is torch.Tensor
    assert_same(tensors, {"w": torch.arange(6.0).reshape(2, 3), "plain": torch.ones(2)})


@pytest.mark.parametrize("key", ("state_dict", "model", "module"))
def test_container_found_automatically(tmp_path: Path, key: str) -> None:
    path = save({key: weights(), "epoch": 7, "optimizer": {"lr": 0.1}}, tmp_path / "c.pt", "zip")
    assert_same(load_checkpoint(path), weights())


def test_top_level_tensors_win_and_non_tensors_are_left_out(tmp_path: Path) -> None:
    path = save({**weights(), "epoch": 7, "names": ["a"]}, tmp_path / "c.pt", "zip")
    assert_same(load_checkpoint(path), weights())


def test_container_path_and_list_index(tmp_path: Path) -> None:
    other = {"w": torch.ones(2)}
    path = save({"ckpt": {"nets": [other, weights()]}}, tmp_path / "c.pt", "zip")
    assert_same(load_checkpoint(path, container=["ckpt", "nets", "1"]), weights())
    assert_same(load_checkpoint(path, container=("ckpt", "nets", "0")), other)


def test_missing_container_lists_available_keys(tmp_path: Path) -> None:
    path = save({"state_dict": weights(), "epoch": 7}, tmp_path / "c.pt", "zip")
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, container="model")
    message = str(caught.value)
    assert str(path) in message and "'model'" in message
    assert "'state_dict': dict of 4 entries (4 tensors)" in message and "'epoch': int" in message


def test_container_without_tensors_reports_its_entries(tmp_path: Path) -> None:
    path = save({"model": weights(), "config": {"lr": 0.1, "depth": 12}}, tmp_path / "c.pt", "zip")
    with pytest.raises(CheckpointError, match=r"holds no tensors \('lr': float, 'depth': int\)"):
        load_checkpoint(path, container="config")
    empty = save({"config": {"lr": 0.1}, "epoch": 2}, tmp_path / "e.pt", "zip")
    with pytest.raises(CheckpointError, match=r"'config': dict of 1 entries \(0 tensors\)"):
        load_checkpoint(empty)


def test_prefixes_stripped_in_order_and_keys_dropped(tmp_path: Path) -> None:
    raw = {
        "module.CARZero.encoder.weight": torch.ones(2),
        "CARZero.head.weight": torch.zeros(3),
        "other.weight": torch.full((1,), 5.0),
        "module.CARZero.text.position_ids": torch.arange(4),
        "module.CARZero.norm.num_batches_tracked": torch.tensor(3),
    }
    path = save({"state_dict": raw}, tmp_path / "c.pt", "zip")

    tensors = load_checkpoint(
        path,
        strip_prefixes=["module.", "CARZero."],
        drop=["text.position_ids"],
        drop_contains=["num_batches_tracked"],
    )

    assert_same(
        tensors,
        {
            "encoder.weight": torch.ones(2),
            "head.weight": torch.zeros(3),
            "other.weight": torch.full((1,), 5.0),
        },
    )
    # `drop` also accepts the key as written in the file.
    kept = load_checkpoint(path, strip_prefixes=["module."], drop=["module.CARZero.encoder.weight"])
    assert "CARZero.encoder.weight" not in kept and "CARZero.head.weight" in kept


def test_keys_colliding_after_stripping_are_an_error(tmp_path: Path) -> None:
    path = save({"module.w": torch.ones(1), "w": torch.zeros(1)}, tmp_path / "c.pt", "zip")
    with pytest.raises(CheckpointError, match="both become 'w'"):
        load_checkpoint(path, strip_prefixes=["module."])


def test_safetensors_round_trip_and_folder(tmp_path: Path) -> None:
    tensors = {**weights(), "bf16": torch.linspace(0, 1, 5).to(torch.bfloat16)}
    path = tmp_path / "weights" / "model.safetensors"
    path.parent.mkdir()
    safetensors.torch.save_file(tensors, path)
    assert_same(load_checkpoint(path), tensors)
    assert_same(load_checkpoint(path.parent), tensors)  # a Hugging Face style weights folder
    # Content, not the suffix, decides the format.
    renamed = path.rename(tmp_path / "model.bin")
    assert_same(
        load_checkpoint(renamed, strip_prefixes=["encoder."]),
        {
            ("weight" if k == "encoder.weight" else "bias" if k == "encoder.bias" else k): v
            for k, v in tensors.items()
        },
    )


def test_sharded_index(tmp_path: Path) -> None:
    tensors = weights()
    keys = sorted(tensors)
    shards = {"part-1.safetensors": keys[:2], "part-2.safetensors": keys[2:]}
    for shard, names in shards.items():
        safetensors.torch.save_file({k: tensors[k] for k in names}, tmp_path / shard)
    index = tmp_path / "model.safetensors.index.json"
    weight_map = {k: shard for shard, names in shards.items() for k in names}
    index.write_text(__import__("json").dumps({"metadata": {}, "weight_map": weight_map}))
    assert_same(load_checkpoint(index), tensors)
    assert_same(load_checkpoint(tmp_path), tensors)


def test_convert_checkpoint_writes_equal_safetensors(tmp_path: Path) -> None:
    shared = torch.randn(4, 3)
    raw = {
        **{f"module.{k}": v for k, v in weights().items()},
        "module.tied.weight": shared,
        "module.tied_again.weight": shared,  # tied weights share storage
        "module.transposed": torch.randn(3, 5).t(),  # not contiguous
        "module.half_view": shared[2:],  # a view into the same storage
    }
    source = save(
        {"model": raw, "epoch": 1, "args": Reduce(os.system, "true")}, tmp_path / "a.pth", "zip"
    )

    out = convert_checkpoint(source, tmp_path / "out" / "a.safetensors", strip_prefixes=["module."])

    expected = load_checkpoint(source, strip_prefixes=["module."])
    assert out == tmp_path / "out" / "a.safetensors"
    assert_same(safetensors.torch.load_file(out), expected)
    assert_same(load_checkpoint(out), expected)
    with safetensors.safe_open(out, "pt") as handle:
        assert handle.metadata()["converted_from"] == "a.pth"
    assert [p.name for p in out.parent.iterdir()] == ["a.safetensors"]  # no temporary left


@pytest.mark.parametrize("fmt", (*FORMATS, "safetensors"))
def test_truncated_file_names_the_file(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"truncated-{fmt}.pt"
    if fmt == "safetensors":
        safetensors.torch.save_file(weights(), path)
    else:
        save({"model": weights()}, path, fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError, match=f"could not read checkpoint .*{path.name}.*truncated"
    ):
        load_checkpoint(path)


def test_missing_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=f"checkpoint not found: .*{tmp_path.name}.*nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="garbage.bin"):
        load_checkpoint(garbage)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt"):
        load_checkpoint(empty)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), path)
    assert zipfile.is_zipfile(path)
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_checkpoint(path)


def test_plain_protocol_2_pickle_with_bytes(tmp_path: Path) -> None:
    # Protocol 2 writes bytes through _codecs.encode, which must stay allowed.
    path = tmp_path / "p2.pkl"
    path.write_bytes(pickle.dumps({"blob": b"\x00\xffabc", "set": {1, 2}, "c": 1 + 2j}, protocol=2))
    assert read_pickle_safely(path) == {"blob": b"\x00\xffabc", "set": {1, 2}, "c": 1 + 2j}


def test_legacy_format_matches_zip(tmp_path: Path) -> None:
    model = TwoLayers()
    legacy = save({"state_dict": model.state_dict()}, tmp_path / "legacy.pth", "legacy")
    assert not zipfile.is_zipfile(legacy)
    loaded = load_checkpoint(legacy)
    assert_same(loaded, dict(model.state_dict()))
    fresh = TwoLayers()
    load_state_dict_strict(fresh, loaded, source=str(legacy))
    assert_same(dict(fresh.state_dict()), dict(model.state_dict()))


# --------------------------------------------------------------------------------------------------
# Strict loading


def test_strict_load_reports_every_kind_of_mismatch_and_changes_nothing() -> None:
    model = TwoLayers()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {
        k: torch.randn_like(v.float()).to(v.dtype) for k, v in TwoLayers().state_dict().items()
    }
    del state["encoder.bias"]
    state["extra.weight"] = torch.ones(1)
    state["head.weight"] = torch.zeros(5, 4)

    with pytest.raises(CheckpointError) as caught:
        load_state_dict_strict(model, state, source="medklip.pth")

    message = str(caught.value)
    assert message.startswith("checkpoint medklip.pth does not fit TwoLayers:")
    assert "1 missing keys (in the model, not in the checkpoint):\n    encoder.bias\n" in message
    assert "1 unexpected keys (in the checkpoint, not in the model):\n    extra.weight\n" in message
    assert "head.weight: model expects (2, 4), checkpoint has (5, 4)" in message
    assert "right checkpoint for this model and variant" in message
    assert_same(dict(model.state_dict()), before)


def test_strict_load_truncates_long_lists() -> None:
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(30)])
    with pytest.raises(CheckpointError) as caught:
        load_state_dict_strict(model, {}, source="empty")
    message = str(caught.value)
    assert "60 missing keys" in message
    assert "    0.weight\n" in message and "... and 40 more" in message
    assert "29.bias" not in message


def test_strict_load_hints_at_a_prefix() -> None:
    model = TwoLayers()
    wrapped = {f"module.{k}": v for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"pass strip_prefixes=\['module.'\]"):
        load_state_dict_strict(TwoLayers(), wrapped, source="dp.pth")
    partial = {
        k.removeprefix("encoder."): v
        for k, v in model.state_dict().items()
        if k.startswith("encoder.")
    }
    with pytest.raises(CheckpointError, match="weights of the submodule 'encoder' only"):
        load_state_dict_strict(
            nn.ModuleDict({"encoder": nn.Linear(3, 4)}), partial, source="enc.pth"
        )


def test_strict_load_succeeds_and_tolerates_counters_torch_fills() -> None:
    source = TwoLayers()
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    target = TwoLayers()
    load_state_dict_strict(target, state, source="old-bn.pth")
    for key, value in state.items():
        assert torch.equal(target.state_dict()[key], value), key
    assert "scratch" not in target.state_dict()  # non-persistent buffers are not compared


def test_strict_load_reports_non_tensor_values() -> None:
    state: dict[str, Any] = dict(nn.Linear(2, 2).state_dict())
    state["bias"] = [0.0, 0.0]
    with pytest.raises(
        CheckpointError, match=r"bias: model expects \(2,\), checkpoint has a list of 2"
    ):
        load_state_dict_strict(nn.Linear(2, 2), state, source="s")


def test_importing_the_module_does_not_import_torch() -> None:
    code = "import sys, xbench_core.checkpoints; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert result.stdout.strip() == "False"
