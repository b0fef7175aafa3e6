"""Checkpoints load without executing code, and every failure is one clear error."""

from __future__ import annotations

import os

import pytest
import torch

from landscape.checkpoint import FORMAT, atomic_torch_save, load_checkpoint, resolve_specs, save_checkpoint
from landscape.errors import UserError


class Payload:
    """An object whose unpickling would run a shell command."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "state_dict": {"w": torch.zeros(1)}, "x": Payload(str(marker))}, path)
    with pytest.raises(UserError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_round_trip_and_plain_state_dict(tmp_path):
    model = torch.nn.Linear(3, 2)
    spec = {"name": "mlp", "kwargs": {"num_classes": 2, "input_shape": (1, 3)}}
    save_checkpoint(tmp_path / "a.pt", model, model_spec=spec, data_spec={"name": "mnist1d"},
                    epoch=1, step=7, lr=0.1, optimizer="sgd")
    raw = torch.load(tmp_path / "a.pt", weights_only=True)
    assert raw["format"] == FORMAT and raw["model"]["kwargs"]["input_shape"] == [1, 3]
    ckpt = load_checkpoint(tmp_path / "a.pt")
    assert ckpt.step == 7 and torch.equal(ckpt.state_dict["weight"], model.weight.detach())

    atomic_torch_save(model.state_dict(), tmp_path / "plain.pt")
    plain = load_checkpoint(tmp_path / "plain.pt")  # read, but it does not say what it is
    assert plain.model is None and torch.equal(plain.state_dict["weight"], model.weight.detach())
    with pytest.raises(UserError, match="--model"):
        resolve_specs([plain])
    model_spec, data_spec = resolve_specs([plain], model="mlp", model_options={"widths": []}, dataset="mnist1d")
    assert model_spec == {"name": "mlp", "kwargs": {"widths": []}} and data_spec == {"name": "mnist1d"}
    # a self-describing checkpoint lends its specs to a plain one scored beside it
    assert resolve_specs([ckpt, plain])[0]["name"] == "mlp"


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", b"PK\x03\x04garbage"])
def test_corrupt_files_are_user_errors(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="bad.pt"):
        load_checkpoint(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(UserError, match="directory"):
        load_checkpoint(tmp_path)
