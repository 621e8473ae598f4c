"""Defaults of the inference stage, light to import so the CLI's help texts can quote them."""

# ONNX opset of exported graphs (onnxruntime >= 1.18 runs it; torch's dynamo exporter writes it).
DEFAULT_OPSET = 18
