"""The Open Inference Protocol (KServe V2) REST codec: pure functions over bytes, no I/O."""
