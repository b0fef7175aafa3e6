"""A researcher's own data: the arrays their training script saved, returned as (train, test)."""

import numpy as np
import torch


def splits(path: str = "mnist1d_user.npz"):
    """MNIST-1D as the user's script made it: (x, y) tensors, x of shape (N, 1, 40)."""
    with np.load(path) as f:
        train = torch.from_numpy(f["x_train"]), torch.from_numpy(f["y_train"])
        test = torch.from_numpy(f["x_test"]), torch.from_numpy(f["y_test"])
    return train, test


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


def images(n_train: int = 64, n_test: int = 32, size: int = 16):
    """Tiny synthetic 3-channel images whose class is the brightest of ten patches, as Datasets."""
    gen = torch.Generator().manual_seed(0)

    def make(n: int):
        y = torch.randint(0, 10, (n,), generator=gen)
        x = 0.3 * torch.randn(n, 3, size, size, generator=gen)
        for i, label in enumerate(y.tolist()):
            row, col = divmod(label, 5)
            x[i, :, 2 + 6 * row : 6 + 6 * row, 1 + 3 * col : 3 + 3 * col] += 2.0
        return _Pairs(x, y)

    return make(n_train), make(n_test)
