"""The pipeline: the compress job and its final stage, apply and check (training and recovery, which
the search and the zoo use too, live below in `compressor.training`)."""
