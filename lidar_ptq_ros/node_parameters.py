"""What every node of this package shares at start-up: parameter specs declared with descriptions, validation into
a Settings object, and one clear error (StartupError) when a value or a resource is not usable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.exceptions import ParameterException

# Parameters every rclpy node has, and QoS overrides: never reported as unknown.
FRAMEWORK_PARAMETERS = ("use_sim_time", "start_type_description_service")


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: object
    description: str
    read_only: bool = False  # takes effect at start only
    constraints: str = ""


class StartupError(Exception):
    """An invalid parameter or a resource that cannot be opened: the node cannot start."""


def float_parameter_names(specs: Sequence[ParameterSpec]) -> set[str]:
    return {spec.name for spec in specs if isinstance(spec.default, float)}


def declare_parameters(node, specs: Sequence[ParameterSpec], validate: Callable[[Mapping[str, object]], object]):
    """Declare every spec on `node` with its description and return validate(values). Float parameters also take
    integers ("rate: 10"); validate checks the values. Unknown parameters are warned about, not fatal, so shared
    parameter files with /** sections still work."""
    floats = float_parameter_names(specs)
    values = {}
    for spec in specs:
        descriptor = ParameterDescriptor(name=spec.name, description=spec.description, read_only=spec.read_only,
                                         additional_constraints=spec.constraints, dynamic_typing=spec.name in floats)
        if spec.name in floats:
            descriptor.type = ParameterType.PARAMETER_DOUBLE
        try:
            values[spec.name] = node.declare_parameter(spec.name, spec.default, descriptor).value
        except ParameterException as exc:  # a value of the wrong type (rclpy names the parameter)
            raise StartupError(str(exc)) from None
    unknown = sorted(name for name in getattr(node, "_parameter_overrides", {})
                     if name not in values and name not in FRAMEWORK_PARAMETERS
                     and not name.startswith("qos_overrides."))
    if unknown:
        node.get_logger().warning(f"ignoring unknown parameter(s) {unknown}; known: {[s.name for s in specs]}")
    try:
        return validate(values)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
