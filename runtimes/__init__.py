"""Runtimes: the engines that execute a loaded model version (ONNX Runtime today).

Nothing here knows about HTTP; the gateway hands numpy arrays in and gets numpy arrays back.
"""
