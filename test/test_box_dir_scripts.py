"""Box folders made by another tool (benchmarks/peers/peer_ptq.py --split test) and scored by
benchmarks/test_split_headline.py --box-dirs: the folder check and the weights digest that names a folder's weights.
The tools themselves run in the peers' venv, in the benchmark."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


headline = _load("test_split_headline", BENCHMARKS / "test_split_headline.py")
peers = _load("peer_ptq", BENCHMARKS / "peers" / "peer_ptq.py")


class ThreeFrames:
    fingerprint = "f" * 16

    def __len__(self):
        return 3

    def frame_id(self, i: int) -> str:
        return f"test_{i:06d}"


def _box_dir(tmp_path: Path, frames=3, **meta) -> Path:
    box_dir = tmp_path / "peer"
    (box_dir / "pred").mkdir(parents=True)
    for i in range(frames):
        (box_dir / "pred" / f"test_{i:06d}.json").write_text("{}")
    meta = {"name": "peer-x", "digest": "abc", "sim_fingerprint": "f" * 16, "frames": 3, **meta}
    (box_dir / "meta.json").write_text(json.dumps(meta))
    return box_dir


def test_a_complete_box_folder_is_read(tmp_path):
    meta = headline.read_box_dir(_box_dir(tmp_path, calibration="modelopt on calib 0..255"), ThreeFrames())
    assert meta["name"] == "peer-x" and meta["calibration"] == "modelopt on calib 0..255"


def test_box_folders_that_cannot_be_scored_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="frames have no boxes"):
        headline.read_box_dir(_box_dir(tmp_path / "a", frames=2), ThreeFrames())
    with pytest.raises(SystemExit, match="other sim frames"):
        headline.read_box_dir(_box_dir(tmp_path / "b", sim_fingerprint="e" * 16), ThreeFrames())
    unfinished = _box_dir(tmp_path / "c")
    (unfinished / "meta.json").unlink()
    with pytest.raises(SystemExit, match="no meta.json"):
        headline.read_box_dir(unfinished, ThreeFrames())
    broken = _box_dir(tmp_path / "d")
    (broken / "meta.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(SystemExit, match="missing digest"):
        headline.read_box_dir(broken, ThreeFrames())


def test_weights_digest_names_exactly_these_weights():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3))
    same = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3))
    same.load_state_dict(net.state_dict())
    assert peers.weights_digest(net) == peers.weights_digest(same)
    with torch.no_grad():  # one ulp in one weight is another model
        same[0].weight[0, 0, 0, 0] = torch.nextafter(same[0].weight[0, 0, 0, 0], torch.tensor(10.0))
    assert peers.weights_digest(net) != peers.weights_digest(same)
    assert len(peers.weights_digest(net)) == 12


def test_method_slug_is_a_folder_name():
    assert peers.method_slug("modelopt INT8_DEFAULT_CFG") == "modelopt-int8_default_cfg"
    assert peers.method_slug("pytorch-quantization entropy") == "pytorch-quantization-entropy"
