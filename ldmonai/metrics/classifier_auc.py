"""Train-on-synthetic, test-on-real: the AUC of a classifier that only ever saw generated slices.

LD's paper trains a ResNet-18 on generated CN and AD slices and tests it on real ones: if the
generator renders what distinguishes the classes, the classifier transfers. FID says whether
samples look real; this says whether they carry the condition they were asked for.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.metrics import ROCAUCMetric
from monai.networks.nets import resnet18

from ldmonai.errors import LdmonaiError

__all__ = ["classifier_auc"]


def _labels(labels: Sequence, classes: list) -> torch.Tensor:
    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor([index[v] for v in labels])


def classifier_auc(train_images: torch.Tensor, train_labels: Sequence, test_images: torch.Tensor, test_labels: Sequence,
                   epochs: int = 30, batch_size: int = 16, learning_rate: float = 1e-3, seed: int = 0,
                   device: str | torch.device = "cpu") -> dict:
    """Fit a 2D MONAI ResNet-18 on ``train_images`` and return its ROC AUC on ``test_images``.

    Args:
        train_images, test_images: ``(N, 1, H, W)`` slices in [0, 1] (synthetic and real).
        train_labels, test_labels: one class value per slice (``"cn"``, ``"ad"``; any two
            hashable values). The positive class is the later one in sorted order.
        epochs, batch_size, learning_rate, seed: the classifier's training (Adam, random
            horizontal flips), seeded so that a run reproduces.

    Returns:
        ``{"auc", "classes", "positive", "num_train", "num_test"}``.
    """
    classes = sorted(set(train_labels) | set(test_labels), key=str)
    if len(classes) != 2:
        raise LdmonaiError(f"classifier AUC needs exactly two classes, got {classes}", None,
                           "give slices of two conditions (for example CN and AD)")
    for name, labels in (("training", train_labels), ("test", test_labels)):
        if len(set(labels)) != 2:
            raise LdmonaiError(f"the {name} slices hold only the class {sorted(set(labels), key=str)}", None,
                               "the AUC needs both classes among the training and among the test slices")
    y_train, y_test = _labels(train_labels, classes), _labels(test_labels, classes)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = resnet18(spatial_dims=2, n_input_channels=train_images.shape[1], num_classes=2).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=learning_rate)
    x_train = train_images.float().to(device)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=g)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x = x_train[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            x = torch.where(flip.to(device)[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(net(x), y_train[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        scores = torch.cat([net(test_images[i : i + 64].float().to(device)).softmax(1)[:, 1].cpu()
                            for i in range(0, len(test_images), 64)])
    metric = ROCAUCMetric()
    metric(scores, y_test)
    return {"auc": float(metric.aggregate()), "classes": [str(c) for c in classes], "positive": str(classes[1]),
            "num_train": len(y_train), "num_test": len(y_test)}
