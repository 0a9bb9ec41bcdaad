"""A small CNN on scikit-learn's handwritten digits: a real trained network for pruning tests."""
import torch
from torch import nn


def load():
    """``(images [N,1,8,8] in [0,1], labels, train indices (1400), test indices (397))``, a fixed split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    return images, labels, order[:1400], order[1400:]


class DigitsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(128 * 4, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def train(model, images, labels, train_idx, epochs):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(train_idx), generator=generator).split(64):
            idx = train_idx[batch]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images[idx]), labels[idx]).backward()
            optimizer.step()
    model.eval()


def accuracy(model, images, labels, idx):
    with torch.no_grad():
        return (model(images[idx]).argmax(1) == labels[idx]).float().mean().item()
