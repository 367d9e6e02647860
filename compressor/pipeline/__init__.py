"""The pipeline: training and recovery, the compress job and its final stage, apply and check."""
