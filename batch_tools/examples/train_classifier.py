"""Example job: train a small 3D CNN that tells a clinical label (diagnosis by default) from
a series, with PyTorch and batch_tools' SeriesDataset; writes model.pt and metrics.json.

    python -m batch_tools.examples.train_classifier DATASET [OUTPUT] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from batch_tools.data import DataError, open_dataset
from batch_tools.examples import job_arguments, output_folder
from batch_tools.torch_data import SeriesDataset


class SmallCNN(nn.Module):
    """Two 3D convolutions, global pooling and a linear layer: small enough for a CPU."""

    def __init__(self, classes: int, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(1, width, 3, padding=1), nn.BatchNorm3d(width), nn.ReLU(),
            nn.MaxPool3d(2),
            nn.Conv3d(width, 2 * width, 3, padding=1), nn.BatchNorm3d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool3d(1))
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def train(dataset: SeriesDataset, *, epochs: int, batch_size: int, workers: int,
          learning_rate: float, seed: int, device: torch.device) -> tuple[nn.Module, dict]:
    """Train on every series; the metrics per epoch are those of that epoch's pass."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        generator=generator, persistent_workers=workers > 0)
    model = SmallCNN(len(dataset.classes)).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        started, total, correct, seen = time.perf_counter(), 0.0, 0, 0
        for volumes, labels in loader:
            volumes, labels = volumes.to(device), labels.to(device)
            optimiser.zero_grad()
            logits = model(volumes)
            loss = loss_fn(logits, labels)
            loss.backward()
            optimiser.step()
            total += loss.item() * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
        history.append({"epoch": epoch, "loss": total / seen, "accuracy": correct / seen,
                        "seconds": round(time.perf_counter() - started, 3)})
    model.eval()
    correct = 0
    with torch.no_grad():
        for volumes, labels in DataLoader(dataset, batch_size=batch_size):
            correct += int((model(volumes.to(device)).argmax(1).cpu() == labels).sum())
    return model, {"epochs": history, "accuracy": correct / len(dataset)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batch_tools.examples.train_classifier",
                                     description=__doc__.splitlines()[0])
    job_arguments(parser)
    parser.add_argument("--label", default="diagnosis", help="clinical key to predict")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--shape", type=int, nargs=3, default=(16, 64, 64),
                        metavar=("SLICES", "ROWS", "COLUMNS"))
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, help="folder to keep decoded series in, "
                        "for example under ~/persistent")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.workers < 0:
        parser.error("--epochs and --batch-size must be positive, --workers not negative")
    output = output_folder(parser, args)
    try:
        mounted = open_dataset(args.dataset)
        data = SeriesDataset(mounted, label_key=args.label, shape=args.shape,
                             cache_dir=args.cache)
    except DataError as exc:
        print(f"error [{exc.code}]: {exc}", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, metrics = train(data, epochs=args.epochs, batch_size=args.batch_size,
                           workers=args.workers, learning_rate=args.learning_rate,
                           seed=args.seed, device=device)
    torch.save({"state_dict": model.cpu().state_dict(), "classes": data.classes,
                "label": args.label, "shape": list(data.shape)}, output / "model.pt")
    metrics.update({"dataset": vars(mounted.info), "label": args.label,
                    "classes": data.classes, "series": len(data), "device": device.type})
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"{len(data)} series, {len(data.classes)} classes, accuracy "
          f"{metrics['accuracy']:.2f}; wrote {output / 'model.pt'} and metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
