"""What a deployment loads: a trained model exported to ONNX and checked against PyTorch."""
