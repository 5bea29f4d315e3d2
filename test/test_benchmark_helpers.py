"""The benchmark scripts' shared helpers (lidar_ptq_core/benchmarking.py): how a row is parsed, named, stored, tabulated
and compared; every figure in docs/benchmarks/ goes through them. Also: the scripts share code only through that
module (no sys.path edits, no script importing another) and each one parses its --help."""

import contextlib
import io
import os
import re
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lidar_ptq_core.benchmarking import (
    DEFAULT_CALIB_FRAMES,
    RECIPE_SETTINGS,
    ROW_DIR,
    append_jsonl,
    calibration_batches,
    data_tag,
    detect_into_box_files,
    file_stem,
    first_reaching,
    format_rows,
    format_split_rows,
    parse_method_spec,
    read_jsonl,
    row_of,
    row_stem,
    same_model,
    split_row_key,
)
from lidar_ptq_core.quant import method_config
from lidar_ptq_core.voxelize import voxelize_clouds

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "benchmarks").rglob("*.py"))


# -- row specs ---------------------------------------------------------------------------------------------------------
def test_spec_without_settings_is_the_preset():
    assert parse_method_spec("lidar-ptq") == ("lidar-ptq", {}, {})
    assert parse_method_spec("sparse-grid:") == ("sparse-grid", {}, {})


def test_spec_settings_are_yaml_values_and_recipe_settings_are_split_off():
    preset, overrides, recipe = parse_method_spec(
        "sparse-grid-tgpl:tgpl_steps=400, tgpl_schedule=cosine,equalize_channels=true,equalization_alpha=0.3,"
        "tgpl_top_k=50,tgpl_score_threshold=0.2")
    assert preset == "sparse-grid-tgpl"
    assert overrides == {"tgpl_steps": 400, "tgpl_schedule": "cosine", "equalize_channels": True,
                         "equalization_alpha": 0.3}
    assert type(overrides["tgpl_steps"]) is int and type(overrides["equalization_alpha"]) is float
    assert recipe == {"tgpl_score_threshold": 0.2, "tgpl_top_k": 50}
    assert set(recipe) == set(RECIPE_SETTINGS)
    # What is left are settings of the preset's QuantConfig, as the scripts hand them on.
    config = method_config(preset, **overrides)
    assert (config.tgpl_steps, config.tgpl_schedule, config.equalize_channels, config.equalization_alpha) == (
        400, "cosine", True, 0.3)


def test_spec_skips_empty_items_and_keeps_the_last_of_a_repeated_key():
    assert parse_method_spec("max:,seed=1,,seed=2,") == ("max", {"seed": 2}, {})


def test_spec_setting_without_a_value_is_one_clear_error():
    with pytest.raises(SystemExit, match=r"bad setting 'tgpl_steps' in 'lidar-ptq:seed=1,tgpl_steps': "
                                         r"expected key=value"):
        parse_method_spec("lidar-ptq:seed=1,tgpl_steps")


# -- row names ---------------------------------------------------------------------------------------------------------
def test_file_stem_keeps_letters_digits_and_dash_underscore_dot():
    assert file_stem("lidar-ptq") == "lidar-ptq"
    assert file_stem("lidar-ptq:equalization_alpha=0.3") == "lidar-ptq_equalization_alpha_0.3"
    assert file_stem("a/b c,d=e") == "a_b_c_d_e"


def test_data_tag_only_for_calibration_data_other_than_the_default():
    assert DEFAULT_CALIB_FRAMES == 256
    assert data_tag(256, 0) == ""
    assert data_tag(32, 0) == "_32f"
    assert data_tag(256, 512) == "_calib512"
    assert data_tag(32, 256) == "_32f_calib256"


def test_row_stem_names_the_committed_files():
    # docs/benchmarks/ptq_sim_pillar_<stem>_report.txt and _eval.txt of rows run with --calib-frames 32
    # --calib-start 256, and the committed checkpoint's row on the default data.
    spec = "lidar-ptq-quick:stage_check_frames=8,adaround=false,sensitivity_frames=0"
    assert row_stem(spec, 32, 256) == ("lidar-ptq-quick_stage_check_frames_8_adaround_false_sensitivity_frames_0"
                                       "_32f_calib256")
    assert row_stem("lidar-ptq-fast", 32) == "lidar-ptq-fast_32f"
    assert row_stem("lidar-ptq:equalization_alpha=0.3", 256) == "lidar-ptq_equalization_alpha_0.3"
    assert ROW_DIR == REPO / "runs" / "ptq_bench"


# -- results files -----------------------------------------------------------------------------------------------------
def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "sub" / "rows.jsonl"
    assert read_jsonl(path) == []
    rows = [{"method": "fp32", "mAP": 0.7081, "mAP_by_range": {"50m+": 0.55}},
            {"method": "lidar-ptq:seed=1", "mAP": 0.7, "note": "ü, \"quoted\"\nnew line"}]
    for row in rows:
        append_jsonl(path, row)
    assert read_jsonl(path) == rows
    assert len(path.read_text().splitlines()) == 2 and path.read_text().endswith("\n")
    assert [p.name for p in path.parent.iterdir()] == ["rows.jsonl"]  # no temporary file left behind


def test_jsonl_append_after_a_file_without_final_newline_and_blank_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"method": "a"}\n\n{"method": "b"}')
    append_jsonl(path, {"method": "c"})
    assert [r["method"] for r in read_jsonl(path)] == ["a", "b", "c"]


# -- rows and tables ---------------------------------------------------------------------------------------------------
def evaluation(all_map, iou_map, near, far):
    return SimpleNamespace(distance_map={"all": all_map, "0-30m": near, "50m+": far}, iou_map={"all": iou_map},
                           ranges=("all", "0-30m", "50m+"))


def test_row_of_takes_the_evaluation_and_rounds_times():
    row = row_of("max", evaluation(0.69, 0.33, 0.75, 0.5), 32, 12.345, 101.26)
    assert row == {"method": "max", "mAP": 0.69, "bev_iou_mAP": 0.33, "mAP_by_range": {"0-30m": 0.75, "50m+": 0.5},
                   "calib_frames": 32, "quant_seconds": 12.3, "median_ms": 101.3}


def test_format_rows_shows_percent_and_the_difference_to_fp32():
    rows = [row_of("fp32", evaluation(0.7081, 0.3438, 0.76, 0.5534), 0, 0.0, 90.0),
            row_of("lidar-ptq", evaluation(0.7048, 0.3434, 0.761, 0.547), 256, 602.4, 95.0)]
    lines = format_rows(rows, "header line").splitlines()
    assert lines[:2] == ["header line", ""]
    assert lines[2].split() == ["method", "mAP", "d", "mAP", "BEV", "IoU", "0-30m", "50m+", "calib", "quant", "s"]
    assert lines[3].split() == ["fp32", "70.8", "+0.0", "34.4", "76.0", "55.3", "0", "0"]
    assert lines[4].split() == ["lidar-ptq", "70.5", "-0.3", "34.3", "76.1", "54.7", "256", "602"]
    assert len(lines) == 5


def test_format_rows_without_fp32_and_with_long_names():
    name = "sparse-grid:equalize_channels=true,share_input_quantizers=true"
    table = format_rows([row_of(name, evaluation(0.5, 0.2, 0.6, 0.4), 32, 1.0, 1.0)], "h").splitlines()
    assert table[3].startswith(name + " ") and table[3].split()[2] == "+nan"
    assert table[2].index("mAP") == len(name) + 1 + 3  # the method column widened to the longest name
    empty = format_rows([], "h").splitlines()
    assert len(empty) == 3 and empty[2].split() == ["method", "mAP", "d", "mAP", "BEV", "IoU", "calib", "quant", "s"]
    assert empty[2].index("mAP") == 18 + 1 + 3  # an 18-character method column at least


def test_first_reaching():
    history = [{"step": 50, "mAP": 0.60}, {"step": 100, "mAP": 0.70}, {"step": 150, "mAP": 0.72}]
    assert first_reaching(history, "mAP", 0.70)["step"] == 100
    assert first_reaching(history, "mAP", 0.65)["step"] == 100
    assert first_reaching(history, "mAP", 0.50)["step"] == 50
    assert first_reaching(history, "mAP", 0.80) is None


def test_same_model_compares_every_tensor(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    saved = tmp_path / "row.safetensors"
    assert same_model(net, saved) == "no saved row to compare"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(saved))
    assert same_model(net, saved) == "same model as the accuracy row"
    with torch.no_grad():
        net[2].bias += 1e-6
    assert same_model(net, saved) == "NOT the same model (1 tensors differ)"
    assert same_model(torch.nn.Linear(3, 2), saved) == "NOT the same model (other tensors)"


def test_calibration_batches_are_one_voxelized_frame_each():
    from lidar_ptq_core.models.config import CenterPointConfig

    from test_models import TINY_PILLAR, random_frame

    config = CenterPointConfig.from_dict(TINY_PILLAR)
    frames = [SimpleNamespace(points=random_frame(seed, 200 + 100 * seed)) for seed in range(3)]
    batches = calibration_batches(config, frames)
    assert len(batches) == 3
    for frame, batch in zip(frames, batches):
        expected = voxelize_clouds([frame.points], config.voxelization, config.num_point_features)[0]
        assert batch.keys() == expected.keys()
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(batch[key], value), key
            else:
                assert np.array_equal(np.asarray(batch[key]), np.asarray(value)), key


# -- the scripts -------------------------------------------------------------------------------------------------------
def test_scripts_share_code_only_through_the_library():
    assert len(SCRIPTS) >= 15
    script_names = {p.stem for p in SCRIPTS}
    imports_a_script = re.compile(r"^\s*(from|import)\s+(" + "|".join(map(re.escape, script_names)) + r")\b", re.M)
    for path in SCRIPTS:
        text = path.read_text()
        assert "sys.path" not in text, f"{path.relative_to(REPO)} edits sys.path"
        assert not imports_a_script.search(text), f"{path.relative_to(REPO)} imports another benchmark script"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO / "benchmarks")))
def test_script_parses_its_help(script, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        runpy.run_path(str(script), run_name="__main__")
    assert stop.value.code == 0
    assert out.getvalue().startswith("usage: ")


def _split_row(name, sha, paired, class_ap, reference_sha=None):
    return {"checkpoint": name, "sha256": sha, "reference_sha256": reference_sha, "frames": 1000,
            "sim_fingerprint": "f", "mAP": 0.70, "bev_iou_mAP": 0.34, "far_range": "50m+", "far_mAP": 0.55,
            "median_ms": None, "paired": paired, "class_ap": class_ap, "calibration": None}


def test_split_table_shows_intervals_and_each_class_difference_against_its_own_fp32_row():
    fp32 = _split_row("fp32", "a", None, {"Car": 0.90, "Cyclist": 0.40})
    interval = {"difference": -0.0033, "low": -0.0051, "high": -0.0014}
    int8 = _split_row("int8", "b", [interval] * 3, {"Car": 0.905, "Cyclist": 0.37}, reference_sha="a")
    table = format_split_rows([fp32, int8], "header")
    int8_line = next(line for line in table.splitlines() if line.startswith("int8 ") and "[" in line)
    assert int8_line.count("-0.33 [-0.51, -0.14]") == 3
    class_line = [line for line in table.splitlines() if line.startswith("int8 ")][-1]
    assert "90.50 (+0.50)" in class_line and "37.00 (-3.00)" in class_line
    assert split_row_key(int8) != split_row_key(dict(int8, sha256="c"))
    assert int8_line.split()[-2] == "-"  # a row kept before agreement was measured
    measured = dict(int8, agreement={"fp32_reproduced": 0.9736, "int8_in_fp32": 0.95, "min_score": 0.3})
    measured_line = next(line for line in format_split_rows([fp32, measured], "h").splitlines()
                         if line.startswith("int8 ") and "[" in line)
    assert measured_line.split()[-2] == "97.4"



def test_run_in_child_returns_the_calls_json_from_a_fresh_process_and_reports_its_failure(tmp_path):
    from lidar_ptq_core.benchmark_child import run_in_child

    script = tmp_path / "bench.py"
    script.write_text("import os\n\ndef measure(n):\n    return {'n': n, 'pid': os.getpid(), 'cwd': os.getcwd()}\n\n"
                      "if __name__ == '__main__':\n    raise SystemExit('the main block must not run')\n")
    result = run_in_child(script, "m['measure'](3)", tmp_path, run_name="bench")
    assert result["n"] == 3 and result["pid"] != os.getpid() and Path(result["cwd"]) == tmp_path
    with pytest.raises(RuntimeError, match="(?s)the child failed:.*ZeroDivisionError"):
        run_in_child(script, "m['measure'](1 / 0)", tmp_path)


def test_changed_settings_compares_lists_with_tuples_and_counts_a_missing_key_as_changed():
    from lidar_ptq_core.benchmarking import changed_settings

    recorded = {"grid_ratios": [0.5, 1.0], "tgpl_steps": 200, "keep_float": []}
    today = {"grid_ratios": (0.5, 1.0), "tgpl_steps": 100, "keep_float": (), "output_correction": False}
    assert changed_settings(recorded, today, sorted(set(recorded) | set(today))) == ["output_correction",
                                                                                       "tgpl_steps"]
    assert changed_settings(recorded, today, ["grid_ratios"]) == []


def test_detect_into_box_files_detects_only_the_missing_frames_and_loads_no_model_when_complete(tmp_path):
    from lidar_ptq_core.boxfile import read_detections, read_ground_truth, write_detections
    from lidar_ptq_core.detections import Detections, GroundTruth

    names = ("Car",)
    frames = [SimpleNamespace(frame_id=f"f{i}", points=np.full((2, 4), i, np.float32),
                              gt=GroundTruth(np.zeros((1, 7), np.float32), np.zeros(1, np.int64), names))
              for i in range(3)]
    dataset = type("Frames", (), {"__len__": lambda self: 3, "__getitem__": lambda self, i: frames[i],
                                  "frame_id": lambda self, i: frames[i].frame_id})()
    seen, made = [], []

    class Fake:
        def detect(self, points):
            seen.append(int(points[0, 0]))
            return Detections(np.full((1, 7), points[0, 0], np.float32), np.ones(1), np.zeros(1), names)

    def make():
        made.append(1)
        return Fake()

    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    write_detections(pred / "f1.json", "f1", Detections(np.zeros((0, 7)), np.zeros(0), np.zeros(0), names))
    seconds = detect_into_box_files(make, dataset, pred, gt, "fake")
    assert seen == [0, 2] and len(seconds) == 2 and made == [1]
    assert read_detections(pred / "f2.json")[1].boxes[0, 0] == 2
    assert len(read_detections(pred / "f1.json")[1].boxes) == 0, "a box file already there is kept"
    assert {f.name for f in gt.iterdir()} == {"f0.json", "f2.json"}
    assert read_ground_truth(gt / "f0.json")[0] == "f0"
    assert detect_into_box_files(make, dataset, pred, gt, "fake") == [] and made == [1]
