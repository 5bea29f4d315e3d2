"""benchmarks/reproduce_checkpoint.py: the tensor comparison and the rerun's arguments (the rerun itself is the
benchmark's job; test_cli checks that quantize records what it needs)."""

import argparse
import importlib.util
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location(
    "reproduce_checkpoint", Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce_checkpoint.py")
reproduce = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reproduce)


def _overrides(**given):
    fields = dict(threads=None, calib=None, frames=None, sim_start=None, sim_config=None, fp32=None)
    return argparse.Namespace(**{**fields, **given})


def test_compare_states_finds_one_ulp_and_a_missing_tensor():
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}
    same = reproduce.compare_states(a, {k: v.clone() for k, v in a.items()})
    assert same["identical"] and same["different"] == [] and same["largest_difference"] == 0
    nudged = {"w": torch.tensor([1.0, torch.nextafter(torch.tensor(2.0), torch.tensor(3.0)).item()]),
              "c": torch.tensor([0.5])}
    result = reproduce.compare_states(a, nudged)
    assert not result["identical"]
    assert result["different"] == ["w"] and result["only_in_one"] == ["b", "c"]
    assert result["largest_difference"] == pytest.approx(2.0 ** -22)


def test_rerun_arguments_from_provenance_and_for_an_older_checkpoint():
    provenance = {"checkpoint": {"name": "sim_pillar"}, "calib": "sim", "frames": 256, "sim_start": 512,
                  "sim_config": "vlp32", "threads": 2, "device": "cpu", "z_offset": -1.4}
    args = reproduce.rerun_arguments(provenance, _overrides(), 256)
    pairs = dict(zip(args[::2], args[1::2]))
    assert pairs["--checkpoint"] == "sim_pillar" and pairs["--sim-start"] == "512"
    assert pairs["--sim-config"] == "vlp32" and pairs["--threads"] == "2" and pairs["--z-offset"] == "-1.4"
    with pytest.raises(ValueError, match="thread count"):
        reproduce.rerun_arguments({}, _overrides(fp32="sim_pillar"), 256)
    older = dict(zip(*[iter(reproduce.rerun_arguments({}, _overrides(threads=2, fp32="sim_pillar"), 256))] * 2))
    assert older["--frames"] == "256" and older["--calib"] == "sim" and older["--sim-start"] == "0"
