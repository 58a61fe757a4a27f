"""PyTorch port of scratch/: same names; the forward in torch, the backward by torch.autograd."""
