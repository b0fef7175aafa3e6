"""A plain PyTorch training script that knows nothing of landscape.

It makes MNIST-1D with the mnist1d package, trains the user's CNN with SGD while keeping an
averaged copy (torch.optim.swa_utils), and saves the weights in the formats people have:
plain state_dicts, dicts holding one, prefixed keys, AveragedModel's, a whole pickled model,
per-epoch files; and a torchvision resnet18 on tiny synthetic images.

    python train_plain.py OUT_DIR [--resnet]
"""

import copy
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import mydata
import mymodels


def make_mnist1d(path: Path) -> None:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = 1200, 1000 / 1200, 7
    raw = make_dataset(args)
    x, xt = raw["x"].astype(np.float32), raw["x_test"].astype(np.float32)
    mean, std = x.mean(), x.std()  # the user's own normalisation, which landscape must not redo
    np.savez(path, x_train=((x - mean) / std)[:, None, :], y_train=raw["y"].astype(np.int64),
             x_test=((xt - mean) / std)[:, None, :], y_test=raw["y_test"].astype(np.int64))


def train_cnn(out: Path) -> None:
    data = out / "mnist1d_user.npz"
    if not data.exists():
        make_mnist1d(data)
    (x, y), _ = mydata.splits(str(data))
    torch.manual_seed(0)
    model = mymodels.net(width=16)
    averaged = torch.optim.swa_utils.AveragedModel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    epochs = 4
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(y))
        for idx in order.split(50):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        averaged.update_parameters(model)
        torch.save(model.state_dict(), out / f"ckpt_{5 * epoch}.pt")  # natural order: ckpt_5 before ckpt_10
    torch.optim.swa_utils.update_bn([(x[i : i + 100],) for i in range(0, len(x), 100)], averaged)
    state = model.state_dict()
    torch.save(state, out / "plain.pt")
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": epochs,
                "global_step": epochs * 20, "hyper_parameters": {"lr": 0.05}}, out / "lightning.ckpt")
    torch.save({f"module.{k}": v for k, v in state.items()}, out / "ddp.pt")
    torch.save({f"_orig_mod.{k}": v for k, v in state.items()}, out / "compiled.pt")
    torch.save({"model_state_dict": state, "optimizer_state_dict": opt.state_dict(), "epoch": epochs}, out / "keyed.pt")
    torch.save({"ema": averaged.module.state_dict(), "step": 80}, out / "ema.pt")
    torch.save(averaged.state_dict(), out / "averaged.pt")  # module.* keys + n_averaged
    torch.save(model, out / "whole_model.pt")  # a pickle with code: must be refused
    wide = mymodels.net(width=24)
    torch.save(wide.state_dict(), out / "wide.pt")  # another width: shapes do not match


def train_resnet(out: Path) -> None:
    import torchvision

    train, _ = mydata.images()
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    loader = torch.utils.data.DataLoader(train, batch_size=32, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    first = copy.deepcopy(model.state_dict())
    for step, (x, y) in enumerate(loader):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if step == 0:
            torch.save(model.state_dict(), out / "r18_step1.pt")
    torch.save(first, out / "r18_init.pt")
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, out / "r18_ddp.pt")


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    if "--resnet" in sys.argv:
        train_resnet(target)
    else:
        train_cnn(target)
