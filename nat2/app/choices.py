"""The fixed choices of the command line, free of heavy imports so that `nat2 --help` and a
mistyped flag answer at once (the command itself then loads torch)."""

METHODS = ("knee", "front", "rbifa")        # select.method
STRATEGIES = ("nat2", "rbifa", "pfifa")     # nat2, or a training-free search of nat2.rbifa.training_free
SPLITS = ("val", "test")                    # nat2 evaluate --split
FORMATS = ("torch", "pt2", "onnx")          # nat2 evaluate --format
BACKENDS = ("torch-cpu", "torch-cuda", "onnxruntime")  # latency.backend, nat2 latency --backend
