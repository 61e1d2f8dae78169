"""edgeloop's cloud-side ML: train the default anomaly model, export it to ONNX with its model card, and
keep versions of it in a registry. The model contract with gpu-inferencer is documented in ml/README.md."""

__version__ = "0.1.0"
