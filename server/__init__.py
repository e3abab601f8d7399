"""The archadapt gRPC service: adapts the meta-learned prior to a user's task and returns ONNX."""
