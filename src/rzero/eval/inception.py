"""The FID Inception-v3 (2048-d pool features) and the clean-fid-style resize in front of it.

FID numbers are only comparable when everyone uses the same network: the TensorFlow
Inception graph of 2015-12-05, whose weights exist as a PyTorch state dict
`pt_inception-2015-12-05-6726825d.pth` (pytorch-fid / torch-fidelity). Its layout is
torchvision's `Inception3` (same module names, 1008-class `fc`, no aux head), but the TF graph
pools differently in four places, and those are what `FIDInception3` changes:

    Mixed_5b..5d (A), Mixed_6b..6e (C), Mixed_7b (E, first): the 3x3 average pool of the pool
        branch does not count the zero padding (TF's AvgPool with SAME padding);
    Mixed_7c (E, last): the pool branch is a 3x3 *max* pool, not an average pool.

Input: (B, 3, 299, 299) in [-1, 1] (the TF graph's own scaling; no ImageNet normalization).
Output: (B, 2048), the global average pool after Mixed_7c.

FID mode "clean" (the only one; `FID_MODE`), equal to clean-fid's `mode="clean"` (Parmar et al.
2022; cleanfid/resize.py `build_resizer("clean")` and cleanfid/inception_torchscript.py):
images are first quantized to uint8 as if saved to PNG, then each channel is resized to
299 x 299 as a float image with PIL's bicubic filter (PIL antialiases when shrinking, unlike
`F.interpolate` without antialias, whose aliasing shifts FID; `clean_resize`), and the [0, 255]
result goes into the network as (x - 128) / 128, the TF graph's own input scaling that
clean-fid applies. (pytorch-fid scales by 2 x / 255 - 1 instead: mixing its scaling with
clean-fid's resize, as rzero did before, matches neither tool; 1.4e-5 relative in features.)
No crop: the aspect ratio of the input is not preserved, exactly like clean-fid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models import inception as tv

from ..utils.io import AssetError, load_checked, load_safetensors, torch_load_safe

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_SIZE = 299
FID_MODE = "clean"  # clean-fid's mode name; results files can quote it


def _how() -> str:
    return (f"download {FID_WEIGHTS_FILE} once (the pytorch-fid / torch-fidelity FID Inception weights, "
            f"github.com/mseitzer/pytorch-fid releases) and pass scale.inception=PATH")


class _BlockA(tv.InceptionA):
    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)  # TF: padding not counted
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(pool)], 1)


class _BlockC(tv.InceptionC):
    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for m in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                  self.branch7x7dbl_5):
            bd = m(bd)
        pool = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(pool)], 1)


class _BlockE(tv.InceptionE):
    """Mixed_7b (max_pool=False) and Mixed_7c (max_pool=True) of the TF graph."""

    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__(in_channels)
        self.max_pool = max_pool

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.max_pool:
            pool = F.max_pool2d(x, 3, stride=1, padding=1)
        else:
            pool = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pool)], 1)


class FIDInception3(torch.nn.Module):
    """FID Inception-v3: (B, 3, 299, 299) in [-1, 1] -> (B, 2048) pool features (see module doc)."""

    def __init__(self):
        super().__init__()
        conv = tv.BasicConv2d  # conv (no bias) + BN(eps=1e-3) + ReLU, as in the TF graph
        self.Conv2d_1a_3x3 = conv(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = conv(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = conv(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = conv(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = conv(80, 192, kernel_size=3)
        self.Mixed_5b = _BlockA(192, pool_features=32)
        self.Mixed_5c = _BlockA(256, pool_features=64)
        self.Mixed_5d = _BlockA(288, pool_features=64)
        self.Mixed_6a = tv.InceptionB(288)
        self.Mixed_6b = _BlockC(768, channels_7x7=128)
        self.Mixed_6c = _BlockC(768, channels_7x7=160)
        self.Mixed_6d = _BlockC(768, channels_7x7=160)
        self.Mixed_6e = _BlockC(768, channels_7x7=192)
        self.Mixed_7a = tv.InceptionD(768)
        self.Mixed_7b = _BlockE(1280, max_pool=False)
        self.Mixed_7c = _BlockE(2048, max_pool=True)
        # Unused for FID; kept so that the released state dict loads strictly (1008 TF classes).
        self.fc = torch.nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3))  # (B, 2048)


def load_fid_inception(path: str | Path | None, device=None) -> FIDInception3:
    """The FID Inception with weights from a local file only (never downloaded), frozen, eval mode."""
    if not path:
        raise AssetError(f"FID needs the Inception weights file; {_how()}")
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / FID_WEIGHTS_FILE
    if not p.is_file():
        raise AssetError(f"FID Inception weights '{p}' not found; {_how()}")
    state = load_safetensors(p) if p.suffix == ".safetensors" else torch_load_safe(p)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise AssetError(f"'{p}' is not a state dict; {_how()}")
    model = FIDInception3()
    # The released file predates BatchNorm's num_batches_tracked counters; other extra keys (the
    # aux head, anything a converter added) are skipped and reported in one line; a missing key or
    # a wrong shape means another network.
    own = model.state_dict()
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")}, **state}
    try:
        load_checked(model, state, p, ignore=("AuxLogits.",))
    except AssetError as e:
        raise AssetError(f"'{p}' is not the FID Inception state dict ({str(e).split(' (', 1)[-1].rstrip(')')}); "
                         f"{_how()}") from e
    return model.to(device or "cpu").eval().requires_grad_(False)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, the values a PNG of the image holds."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def clean_resize(images: np.ndarray, size: int = FID_SIZE) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, size, size) float in [0, 255]: per-channel float PIL bicubic,
    clipped to [0, 255] (clean-fid's make_resizer("PIL", quantize_after=False, "bicubic"))."""
    from PIL import Image

    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, img in enumerate(images):
        for c in range(3):
            # float32 2-D arrays become PIL mode "F": no rounding to uint8 between resize and network.
            ch = Image.fromarray(np.ascontiguousarray(img[:, :, c], dtype=np.float32))
            out[i, c] = np.asarray(ch.resize((size, size), resample=Image.BICUBIC))
    return torch.from_numpy(out).clamp_(0, 255)


def fid_input(resized: torch.Tensor, mode: str = FID_MODE) -> torch.Tensor:
    """clean_resize's [0, 255] output -> the network's input: (x - 128) / 128 in clean mode."""
    if mode != FID_MODE:
        raise ValueError(f"FID mode must be '{FID_MODE}' (clean-fid's clean mode), got '{mode}'")
    return (resized - 128.0) / 128.0


@torch.no_grad()
def inception_features(model: FIDInception3, images_uint8: np.ndarray, batch_size: int = 50,
                       mode: str = FID_MODE) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 2048) float64 features on CPU, as clean-fid computes them in `mode`."""
    device = next(model.parameters()).device
    feats = [model(fid_input(clean_resize(images_uint8[s:s + batch_size]), mode).to(device)).double().cpu()
             for s in range(0, len(images_uint8), batch_size)]
    return torch.cat(feats) if feats else torch.empty(0, 2048, dtype=torch.float64)
