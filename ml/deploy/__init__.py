"""Deployments: iotedgedev-style manifest generation, offline validation, IoT Hub (layered) deployments."""

from ml.deploy.cli import add_subcommands
from ml.deploy.iothub import (
    DeployError,
    IoTHubDeployments,
    LayeredDeployment,
    ModelRef,
    build_layered_deployment,
)
from ml.deploy.manifest import ManifestError, generate, load_module_images, load_variables, output_name
from ml.deploy.validate import Kind, Problem, Severity, detect_kind, validate

__all__ = [
    "DeployError",
    "IoTHubDeployments",
    "Kind",
    "LayeredDeployment",
    "ManifestError",
    "ModelRef",
    "Problem",
    "Severity",
    "add_subcommands",
    "build_layered_deployment",
    "detect_kind",
    "generate",
    "load_module_images",
    "load_variables",
    "output_name",
    "validate",
]
