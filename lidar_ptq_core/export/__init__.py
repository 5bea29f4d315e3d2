"""Deployment artefacts: the `.lptq` bundle, one file that holds everything a robot needs to run a detector.

Only the container lives here so far (bundle.py); the export of a model into it (ONNX graphs, encoder weights) and
the network-level checks of a bundle against its config follow.
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
