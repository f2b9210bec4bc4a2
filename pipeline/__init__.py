import os

# TensorFlow logs every oneDNN/CPU-feature notice at start-up; keep the stage output readable.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
