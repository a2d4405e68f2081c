"""ImageNet from a user-supplied folder: ``ROOT/{train,val}/<class>/<image>``, resized to 256 and center-cropped to 224.

Classes are the sorted subfolder names (the usual wnid order). Meant for evaluation subsets: the split is held in
memory, so point ``$CERTQUANT_DATA/imagenet`` (or ``root``) at a subset folder for large runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from certquant.data.registry import DatasetInfo, data_search_path, register_dataset
from certquant.utils.errors import CertquantError

EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp")
RESIZE, CROP = 256, 224


def _split_folder(split: str, root) -> Path:
    folder_names = {"train": ["train"], "test": ["val", "test"]}[split]
    roots = [Path(root)] if root else data_search_path("imagenet")
    for base in roots:
        for name in folder_names:
            if (base / name).is_dir():
                return base / name
    looked = ", ".join(str(r) for r in roots)
    raise CertquantError(
        f"ImageNet '{split}' folder not found (looked for {'/'.join(folder_names)} under {looked}): "
        "set $CERTQUANT_DATA to a folder holding imagenet/val/<class>/*.JPEG"
    )


def load_image(path: Path) -> np.ndarray:
    """Resize the short side to 256 (bilinear) and center-crop 224; returns (3, 224, 224) uint8."""
    from PIL import Image

    with Image.open(path) as file:
        img = file.convert("RGB")
        w, h = img.size
        scale = RESIZE / min(w, h)
        img = img.resize((max(CROP, round(w * scale)), max(CROP, round(h * scale))), Image.Resampling.BILINEAR)
        w, h = img.size
        left, top = (w - CROP) // 2, (h - CROP) // 2
        img = img.crop((left, top, left + CROP, top + CROP))
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def load_imagenet(split: str, root=None) -> tuple[torch.Tensor, torch.Tensor]:
    folder = _split_folder(split, root)
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not classes:
        raise CertquantError(f"{folder} has no class subfolders: expected {folder}/<class>/<image>")
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted(os.listdir(folder / name)):
            if file.lower().endswith(EXTENSIONS):
                images.append(load_image(folder / name / file))
                labels.append(label)
    if not images:
        raise CertquantError(f"no images ({', '.join(EXTENSIONS)}) under {folder}")
    x = torch.from_numpy(np.stack(images).astype(np.float32) / 255.0)
    return x, torch.tensor(labels, dtype=torch.int64)


register_dataset(
    DatasetInfo(
        name="imagenet",
        num_classes=1000,
        in_channels=3,
        input_size=224,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        loader=load_imagenet,
        description="ImageNet: supply the folder yourself ($CERTQUANT_DATA/imagenet/val/<class>/<image>)",
    )
)
