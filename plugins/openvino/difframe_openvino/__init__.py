"""difframe-openvino: run a pipeline's models through OpenVINO on the CPU (``build(..., backend="openvino")``)."""

__version__ = "0.1.0"
