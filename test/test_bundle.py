"""The .lptq bundle: a round trip keeps every byte, writes are atomic, and every way a file can be broken gives one
clear error naming the file and the problem. Tiny parts, no torch: the whole file runs in about a second."""

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest

from lidar_ptq_core import cli
from lidar_ptq_core.config_files import resolve_config
from lidar_ptq_core.export import BundleManifest, check_part_name, read_bundle, write_bundle
from lidar_ptq_core.export import bundle as bundle_module
from lidar_ptq_core.models.config import load_model_config

PARTS = {
    "dense.onnx": b"ONNX-GRAPH" * 50,
    "encoder.safetensors": b"\x01\x02WEIGHTS" * 40,
    "labels.json": b'["Car", "Truck", "Pedestrian", "Cyclist"]',
}
QUANTIZATION = {"method": "lidar-ptq", "summary": {"calibration_frames": 4, "seconds": 2.5}}
PLAIN_NAME_RULE = "(letters, digits, '.', '_', '-'; no '/', not starting with '.' or '-', at most 255 characters)"
NOT_A_ZIP = "not a lidar-ptq bundle: not a ZIP archive, or the file is truncated"


@pytest.fixture(scope="module")
def config():
    return load_model_config(resolve_config("sim_pillar", "models"))


@pytest.fixture
def good(tmp_path, config):
    return write_bundle(tmp_path / "model.lptq", BundleManifest.for_model(config, QUANTIZATION), PARTS)


def archive_contents(path) -> tuple[dict, dict]:
    """(manifest, {member: bytes}) read with zipfile alone, trusting nothing of the bundle module."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    return json.loads(members.pop("manifest.json")), members


def rezip(path, manifest, members: dict) -> None:
    """Write an archive by hand: whatever manifest (dict, raw text or None) and members a test wants."""
    path.unlink(missing_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        if manifest is not None:
            archive.writestr("manifest.json", manifest if isinstance(manifest, (str, bytes)) else json.dumps(manifest))
        for name, data in members.items():
            archive.writestr(name, data)


def edit(path, change) -> None:
    """Rewrite the bundle at `path` after `change(manifest, members)` edited its manifest and members in place."""
    manifest, members = archive_contents(path)
    change(manifest, members)
    rezip(path, manifest, members)


def assert_refused(path, expected: str, verify: bool = True) -> None:
    with pytest.raises(ValueError) as info:
        read_bundle(path, verify=verify)
    assert str(info.value) == f"{path}: {expected}"


# -- round trip ------------------------------------------------------------------------------------------------------

def test_round_trip_keeps_parts_and_manifest(good, config):
    bundle = read_bundle(good)
    assert bundle.read_parts() == PARTS and bundle.read_part("dense.onnx") == PARTS["dense.onnx"]
    written, _ = archive_contents(good)
    assert bundle.manifest == BundleManifest.from_dict(written) and bundle.manifest.to_dict() == written
    assert bundle.config == config and written["model"] == config.to_dict()
    assert written["class_names"] == ["Car", "Truck", "Pedestrian", "Cyclist"]
    assert written["decode"] == config.post_processing.to_dict() and written["quantization"] == QUANTIZATION
    assert written["format"] == "lidar-ptq-bundle" and written["format_version"] == 2
    assert written["created"].endswith("Z") and {"python", "torch", "onnx", "lidar-ptq"} <= set(written["tools"])
    assert written["parts"]["dense.onnx"] == {
        "sha256": hashlib.sha256(PARTS["dense.onnx"]).hexdigest(), "size": 500,
        "media_type": "application/x-onnx", "role": "dense",
    }
    assert written["parts"]["encoder.safetensors"]["media_type"] == "application/x-safetensors"
    with zipfile.ZipFile(good) as archive:
        assert archive.namelist() == ["manifest.json", *PARTS]
        methods = {info.filename: info.compress_type for info in archive.infolist()}
    assert methods == {"manifest.json": zipfile.ZIP_STORED, "dense.onnx": zipfile.ZIP_STORED,
                       "encoder.safetensors": zipfile.ZIP_STORED, "labels.json": zipfile.ZIP_DEFLATED}


def test_plain_dict_manifest_declared_roles_and_identical_bytes(tmp_path, config):
    """A dict manifest may leave out what the writer knows; declared roles and media types are kept; the same
    inputs give the same bytes."""
    model = config.to_dict()
    manifest = {"model": model, "class_names": model["class_names"], "voxelization": model["voxelization"],
                "decode": model["post_processing"], "quantization": None, "created": "2024-05-01T08:00:00Z",
                "parts": {"dense.onnx": {"role": "network", "media_type": "application/onnx"}}}
    first = write_bundle(tmp_path / "a.lptq", manifest, {"dense.onnx": b"graph"})
    second = write_bundle(tmp_path / "b.lptq", manifest, {"dense.onnx": b"graph"})
    assert first.read_bytes() == second.read_bytes()
    bundle = read_bundle(first)
    assert bundle.manifest.quantization is None and bundle.manifest.created == "2024-05-01T08:00:00Z"
    assert bundle.manifest.parts["dense.onnx"]["role"] == "network"
    assert bundle.manifest.parts["dense.onnx"]["media_type"] == "application/onnx"


# -- atomic writes ---------------------------------------------------------------------------------------------------

def test_write_leaves_no_temporary_files(good, config):
    write_bundle(good, BundleManifest.for_model(config), {"dense.onnx": b"new"})  # replaces the file
    assert os.listdir(good.parent) == ["model.lptq"]
    assert read_bundle(good).read_parts() == {"dense.onnx": b"new"}


def test_failed_write_keeps_the_previous_file_and_leaves_nothing_else(good, config, monkeypatch):
    before = good.read_bytes()
    write_member = bundle_module._write_member
    calls = []

    def fail_on_second_part(archive, name, *args):
        calls.append(name)
        if len(calls) == 3:
            raise OSError("disk full")
        write_member(archive, name, *args)

    monkeypatch.setattr(bundle_module, "_write_member", fail_on_second_part)
    with pytest.raises(OSError, match="disk full"):
        write_bundle(good, BundleManifest.for_model(config), PARTS)
    assert good.read_bytes() == before and os.listdir(good.parent) == ["model.lptq"]
    fresh = good.parent / "fresh.lptq"
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        write_bundle(fresh, BundleManifest.for_model(config), PARTS)
    assert os.listdir(good.parent) == ["model.lptq"]


# -- part names ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", ".", "..", "../evil.onnx", "a/b.onnx", "/abs.onnx", "a\\b", ".hidden", "-x",
                                  "x" * 256, "sp ace.onnx"])
def test_write_refuses_names_that_are_not_plain(tmp_path, config, name):
    with pytest.raises(ValueError) as info:
        write_bundle(tmp_path / "m.lptq", BundleManifest.for_model(config), {name: b"x"})
    assert str(info.value) == f"part name {name!r} is not a plain file name {PLAIN_NAME_RULE}"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["manifest.json", "Manifest.JSON"])
def test_write_refuses_the_manifest_name(tmp_path, config, name):
    with pytest.raises(ValueError) as info:
        write_bundle(tmp_path / "m.lptq", BundleManifest.for_model(config), {name: b"{}"})
    assert str(info.value) == f"part name {name!r} is reserved for the manifest"


def test_plain_names_pass():
    for name in ("dense.onnx", "encoder_v2.safetensors", "head-0.json", "_x", "a..b"):
        assert check_part_name(name) == name


def test_write_refuses_declared_parts_without_data_and_non_bytes(tmp_path, config):
    manifest = BundleManifest.for_model(config)
    manifest.parts = {"dense.onnx": {"role": "dense"}}
    with pytest.raises(ValueError) as info:
        write_bundle(tmp_path / "m.lptq", manifest, {})
    assert str(info.value) == "the manifest lists parts with no data: ['dense.onnx']"
    with pytest.raises(ValueError) as info:
        write_bundle(tmp_path / "m.lptq", BundleManifest.for_model(config), {"dense.onnx": "text"})
    assert str(info.value) == "part 'dense.onnx' must be bytes, got str"


def test_write_refuses_a_manifest_the_reader_would_refuse(tmp_path, config):
    manifest = BundleManifest.for_model(config)
    manifest.class_names = ["Car"]
    with pytest.raises(ValueError, match="manifest 'class_names' disagrees with the model config's 'class_names'"):
        write_bundle(tmp_path / "m.lptq", manifest, PARTS)
    assert os.listdir(tmp_path) == []


# -- malformed files: one clear error each ---------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        read_bundle(tmp_path / "nope.lptq")
    assert str(info.value) == f"bundle not found: {tmp_path / 'nope.lptq'}"


def test_folder_is_not_a_bundle(tmp_path):
    assert_refused(tmp_path, "not a file")


def test_not_a_zip(tmp_path):
    path = tmp_path / "model.lptq"
    path.write_text("just text")
    assert_refused(path, NOT_A_ZIP)


@pytest.mark.parametrize("keep", [0.5, -1])
def test_truncated_file(good, keep):
    data = good.read_bytes()
    good.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    assert_refused(good, NOT_A_ZIP)


def test_missing_manifest(good):
    _, members = archive_contents(good)
    rezip(good, None, members)
    assert_refused(good, "no manifest.json in the archive: not a lidar-ptq bundle")


def test_manifest_not_json(good):
    _, members = archive_contents(good)
    rezip(good, "{not json", members)
    assert_refused(good, "manifest.json is not valid JSON "
                         "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1))")


def test_manifest_not_an_object(good):
    _, members = archive_contents(good)
    rezip(good, "[1, 2]", members)
    assert_refused(good, "manifest must be a JSON object, got a list")


def test_unknown_format(good):
    edit(good, lambda manifest, members: manifest.update(format="other-bundle"))
    assert_refused(good, "unknown format 'other-bundle'; expected 'lidar-ptq-bundle'")


def test_newer_format_version(good):
    edit(good, lambda manifest, members: manifest.update(format_version=3))
    assert_refused(good, "unsupported format_version 3 (written by a newer lidar-ptq?); "
                         "this lidar-ptq reads format_version 1, 2")


def test_a_version_1_bundle_still_reads(good):
    """Bundles written before the runtime and parity sections existed read back, manifest unchanged."""
    edit(good, lambda manifest, members: manifest.update(format_version=1))
    bundle = read_bundle(good)
    assert bundle.manifest.format_version == 1 and bundle.manifest.runtime is None
    assert bundle.manifest.to_dict() == archive_contents(good)[0]


def test_optional_sections_must_be_objects(good):
    edit(good, lambda manifest, members: manifest.update(parity=[1]))
    assert_refused(good, "manifest 'parity' must be an object, got a list")


@pytest.mark.parametrize("version", [0, "1", True, None])
def test_invalid_format_version(good, version):
    edit(good, lambda manifest, members: manifest.update(format_version=version))
    assert_refused(good, f"unsupported format_version {version!r}; this lidar-ptq reads format_version 1, 2")


def test_missing_required_keys(good):
    edit(good, lambda manifest, members: [manifest.pop("decode"), manifest.pop("tools")])
    assert_refused(good, "manifest is missing required keys ['decode', 'tools']")


def test_unknown_manifest_key(good):
    edit(good, lambda manifest, members: manifest.update(extra=1))
    assert_refused(good, "manifest has unknown keys ['extra']; expected ['format', 'format_version', 'created', "
                         "'model', 'class_names', 'voxelization', 'decode', 'quantization', 'tools', 'parts'] and "
                         "optionally ['runtime', 'parity']")


def test_wrong_type_in_manifest(good):
    edit(good, lambda manifest, members: manifest.update(class_names="Car"))
    assert_refused(good, "manifest 'class_names' must be a list, got a string")


def test_quantization_without_method(good):
    edit(good, lambda manifest, members: manifest.update(quantization={"summary": {}}))
    assert_refused(good, "manifest 'quantization' is missing required keys ['method']")


def test_part_listed_but_missing_from_archive(good):
    edit(good, lambda manifest, members: members.pop("encoder.safetensors"))
    assert_refused(good, "parts listed in the manifest are missing from the archive: ['encoder.safetensors']")


def test_archive_member_not_in_manifest(good):
    edit(good, lambda manifest, members: members.update({"extra.bin": b"?"}))
    assert_refused(good, "archive members not listed in the manifest: ['extra.bin']")


def test_part_replaced_with_same_size_bytes_is_a_sha256_mismatch(good):
    swapped = PARTS["dense.onnx"].replace(b"GRAPH", b"GRAFT")
    edit(good, lambda manifest, members: members.update({"dense.onnx": swapped}))
    expected = hashlib.sha256(PARTS["dense.onnx"]).hexdigest()[:16]
    actual = hashlib.sha256(swapped).hexdigest()[:16]
    assert_refused(good, f"part 'dense.onnx' sha256 mismatch: the manifest says {expected}..., "
                         f"the contents hash to {actual}...")


def test_part_of_another_size_is_a_size_mismatch(good):
    edit(good, lambda manifest, members: members.update({"dense.onnx": b"short"}))
    assert_refused(good, "part 'dense.onnx' size mismatch: the manifest says 500 bytes, the archive holds 5")


def test_flipped_byte_in_a_part_is_caught(good):
    data = bytearray(good.read_bytes())
    data[data.find(PARTS["dense.onnx"]) + 7] ^= 0xFF
    good.write_bytes(bytes(data))
    assert_refused(good, "part 'dense.onnx' is damaged or unreadable (Bad CRC-32 for file 'dense.onnx')")


def test_model_config_that_does_not_parse(good):
    edit(good, lambda manifest, members: manifest["model"].update(num_point_features=2))
    assert_refused(good, "the model config in the manifest does not parse: num_point_features must be >= 3 "
                         "(x, y, z first)")


def test_repeated_section_disagreeing_with_the_model(good):
    edit(good, lambda manifest, members: manifest["decode"].update(score_threshold=0.5))
    with pytest.raises(ValueError) as info:
        read_bundle(good)
    assert str(info.value).startswith(f"{good}: manifest 'decode' disagrees with the model config's "
                                      "'post_processing': {'score_threshold': 0.5, ")


def test_unsafe_part_name_in_manifest(good):
    def smuggle(manifest, members):
        manifest["parts"]["../evil.onnx"] = manifest["parts"].pop("dense.onnx")
        members["../evil.onnx"] = members.pop("dense.onnx")

    edit(good, smuggle)
    assert_refused(good, f"part name '../evil.onnx' is not a plain file name {PLAIN_NAME_RULE}")


def test_malformed_sha256_in_manifest(good):
    edit(good, lambda manifest, members: manifest["parts"]["dense.onnx"].update(sha256="ABC"))
    assert_refused(good, "manifest part 'dense.onnx' sha256 must be 64 lowercase hex digits")


def test_member_stored_twice(good):
    manifest, members = archive_contents(good)
    rezip(good, manifest, members)
    with zipfile.ZipFile(good, "a") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        archive.writestr("dense.onnx", PARTS["dense.onnx"])
    assert_refused(good, "the archive holds ['dense.onnx'] more than once")


def test_without_verify_damaged_part_is_refused_when_read(good):
    swapped = PARTS["dense.onnx"].replace(b"GRAPH", b"GRAFT")
    edit(good, lambda manifest, members: members.update({"dense.onnx": swapped}))
    bundle = read_bundle(good, verify=False)  # listing and sizes still checked, hashes not
    assert bundle.read_part("labels.json") == PARTS["labels.json"]
    with pytest.raises(ValueError, match=r"part 'dense.onnx' sha256 mismatch"):
        bundle.read_part("dense.onnx")
    with pytest.raises(ValueError) as info:
        bundle.read_part("head.onnx")
    assert str(info.value) == f"{good}: no part named 'head.onnx'; the bundle holds {list(PARTS)}"


# -- lidar-ptq inspect -----------------------------------------------------------------------------------------------

def test_inspect_prints_what_the_bundle_holds(good, capsys):
    assert cli.main(["inspect", str(good)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"bundle        {good}"
    assert lines[1].startswith("format        lidar-ptq-bundle v2, created ")
    assert "model         sim_centerpoint_pillar (PillarVFE + PointPillarScatter, 4 point features)" in lines
    assert "classes       Car, Truck, Pedestrian, Cyclist" in lines
    assert "quantization  lidar-ptq: calibration_frames=4 seconds=2.5" in lines
    assert any(line.startswith("voxelization  point_cloud_range=[") for line in lines)
    assert any(line.startswith("decode        score_threshold=0.1 ") and "nms.type=rotated" in line
               for line in lines)
    assert any(line.startswith("tools         python ") and "lidar-ptq " in line for line in lines)
    assert "parts (3, sha256 verified)" in lines
    rows = [line.split() for line in lines[lines.index("parts (3, sha256 verified)") + 2:]]
    assert rows == [[name, name.split(".")[0], str(len(data)), "B", hashlib.sha256(data).hexdigest()[:12]]
                    for name, data in PARTS.items()]


def test_inspect_json_prints_the_manifest(good, capsys):
    assert cli.main(["inspect", str(good), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == archive_contents(good)[0]


def test_inspect_bad_file_is_a_one_line_error(good, capsys):
    edit(good, lambda manifest, members: members.update({"dense.onnx": b"short"}))
    assert cli.main(["inspect", str(good)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"lidar-ptq inspect: error: {good}: part 'dense.onnx' size mismatch: "
                            "the manifest says 500 bytes, the archive holds 5\n")
    assert cli.main(["inspect", str(good.parent / "gone.lptq")]) == 2
    assert capsys.readouterr().err == f"lidar-ptq inspect: error: bundle not found: {good.parent / 'gone.lptq'}\n"


def test_the_shipped_int8_bundle_is_todays_export_of_the_shipped_int8_checkpoint(tmp_path):
    """checkpoints/sim_pillar_int8.lptq (the detector node's default model) holds exactly the bytes of the committed
    INT8 checkpoint and the dense graph today's export writes for it (export is deterministic), and a bare file name
    finds it. When this fails, remake it: `lidar-ptq export --checkpoint sim_pillar_int8 --out
    checkpoints/sim_pillar_int8.lptq`."""
    from lidar_ptq_core.export.bundle import read_bundle
    from lidar_ptq_core.export.export_bundle import export_bundle
    from lidar_ptq_core.runtime import bundled_checkpoint
    from lidar_ptq_core.runtime.detector import bundled_bundle

    path = bundled_bundle("sim_pillar_int8.lptq")
    assert path.is_file() and path.parent.name == "checkpoints"
    shipped = read_bundle(path)  # verifies every part's checksum
    fresh = read_bundle(export_bundle(bundled_checkpoint("sim_pillar_int8"), tmp_path / "fresh.lptq"))
    assert sorted(shipped.manifest.parts) == sorted(fresh.manifest.parts)
    for name in fresh.manifest.parts:
        assert shipped.read_part(name) == fresh.read_part(name), f"{name} differs from today's export"
    assert bundled_bundle("elsewhere/none.lptq") == Path("elsewhere/none.lptq"), "paths are taken as given"
