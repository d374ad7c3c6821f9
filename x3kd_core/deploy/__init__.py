"""Deployment formats: ONNX export of the camera student and an onnxruntime session for it.

Submodules are imported explicitly (``from x3kd_core.deploy.onnx_export import export_checkpoint``):
onnx and onnxruntime load only when used.
"""
