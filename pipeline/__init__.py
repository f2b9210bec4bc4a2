"""fer-pipeline: FER2013 to a quantized TFLite model (the DVC stages in this package) and a TensorFlow-free
runner for it (`pipeline.inference`)."""

import os

# TensorFlow logs every oneDNN/CPU-feature notice at start-up; keep the stage output readable.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow enables its oneDNN kernels by default on some CPUs only. On an AMD EPYC host with AVX2 and no
# AVX-512 they were off, and turning them on trained the FER2013 network 1.9x faster (reports/train_speed.md).
# Read once, when TensorFlow is imported: TF_ENABLE_ONEDNN_OPTS=0 in the environment turns them off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
