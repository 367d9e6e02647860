"""The zoo: torchvision models, the embedded datasets, and cached baselines."""
