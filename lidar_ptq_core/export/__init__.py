"""Deployment artefacts: the `.lptq` bundle, one file that holds everything a robot needs to run a detector.

bundle.py is the container (imports no torch: the runtime reads bundles with it); export_bundle.py writes a model
into it with every graph a backend runs (onnx_qdq.py, onnx_ort_int8.py, pillar_encoder.py) and their parity against
the torch model (parity.py).
"""

from .bundle import (
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    BUNDLE_SUFFIX,
    MANIFEST_NAME,
    READABLE_FORMAT_VERSIONS,
    Bundle,
    BundleManifest,
    check_model_sections,
    check_part_name,
    read_bundle,
    tool_versions,
    write_bundle,
)

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "BUNDLE_SUFFIX",
    "MANIFEST_NAME",
    "READABLE_FORMAT_VERSIONS",
    "Bundle",
    "BundleManifest",
    "check_model_sections",
    "check_part_name",
    "read_bundle",
    "tool_versions",
    "write_bundle",
]
