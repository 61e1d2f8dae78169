"""Module images: build every module under modules/ with the Docker engine, tagged as iotedgedev tags them
(and as the deployment manifest generator names them), push them, and bake a registered model into a
gpu-inferencer image for sites that ship models as images."""

from ml.images.build import (
    BuiltImage,
    ImageError,
    ImagePlan,
    bake_model,
    build_images,
    plan_images,
    push_images,
)

__all__ = [
    "BuiltImage",
    "ImageError",
    "ImagePlan",
    "bake_model",
    "build_images",
    "plan_images",
    "push_images",
]
