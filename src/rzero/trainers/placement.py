"""Where a trainer's tensors live and in which precision: the one owner of device and dtype.

The engine creates the accelerator first; it picks the device (the launcher's GPU,
cuda:$LOCAL_RANK, when one is visible; the CPU otherwise or with `device: cpu`). Trainers
build their networks there when they can (real-scale backbones and rewards take a device),
and `Trainer.setup` then moves every module the trainer owns (trained networks, frozen
copies, rewards, classifiers) with `move_module` before the optimizer and the distributed
wrapper see the weights; the EMA is created afterwards, on the same device.

Trained networks keep float32 master weights whatever `backbone_dtype` is: AdamW steps on
bf16 weights lose every update smaller than the weight's rounding step (on a toy, 0.8 % of
bf16 weights moved after 10 steps at lr 1e-6, 99.99 % in float32). `mixed_precision: bf16`
still computes in bf16, under autocast.

Not moved: the built-in world's text encoder (world/text.py). It is one shared, frozen
instance per process that caches token states and hands them to the caller's device.
"""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")


def make_accelerator(cfg):
    """The run's Accelerator: device from `cfg.device`, precision from `cfg.mixed_precision`.

    accelerate keeps one global state per process and refuses a second precision; a single
    process may train several runs one after another (tests, benchmarks, `rzero bench`), so
    there the state is reset when a run asks for other settings. Never under a launcher.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but torch sees no GPU; use device=auto (GPU when there is one) or device=cpu")
    cpu = cfg.device == "cpu" or not torch.cuda.is_available()
    if AcceleratorState._shared_state and PartialState().num_processes == 1:
        state = AcceleratorState()
        if state.mixed_precision != cfg.mixed_precision or (state.device.type == "cpu") != cpu:
            AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum, cpu=cpu)


def move_module(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`module.to(device)`; a submodule that remembers its device in an attribute (the SD
    backbones' `device_`, the real-scale rewards' `device`) is told the new one too."""
    device = torch.device(device)
    module.to(device)
    for m in module.modules():
        for attr in ("device", "device_"):
            if isinstance(vars(m).get(attr), torch.device):
                vars(m)[attr] = device
    return module


@torch.no_grad()
def upcast_trainable(module: torch.nn.Module) -> int:
    """Trainable parameters of `module` to float32 in place (frozen ones keep their dtype);
    returns how many were cast. The Parameter objects stay, so existing references hold."""
    cast = 0
    for p in module.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
            cast += 1
    return cast


def misplaced(modules: dict[str, torch.nn.Module], device: torch.device) -> list[str]:
    """`name.tensor (device)` for every parameter or buffer not on `device` (empty: all placed)."""
    device = torch.device(device)
    bad = []
    for name, module in modules.items():
        for key, t in [*module.named_parameters(), *module.named_buffers()]:
            if not same_device(t.device, device):
                bad.append(f"{name}.{key} ({t.device})")
    return bad


def not_fp32(modules: dict[str, torch.nn.Module]) -> list[str]:
    """`name.parameter (dtype)` for every trainable parameter that is not float32."""
    return [f"{name}.{key} ({p.dtype})" for name, module in modules.items()
            for key, p in module.named_parameters() if p.requires_grad and p.dtype != torch.float32]


def same_device(a: torch.device, b: torch.device) -> bool:
    """cuda and cuda:0 name the same device when the current one is 0."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.type != "cuda" or a.index == b.index:
        return True
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


def _stays_on_cpu(obj) -> bool:
    """Holders of tensors that stay on the CPU by design: the world's shared text encoder (it
    hands its cached states to the caller's device) and the noise schedules (they copy their
    (T,) tables to the query's device on each call)."""
    from ..diffusion.schedules import FlowSchedule, VPSchedule
    from ..world.text import WorldTextEncoder

    return isinstance(obj, (WorldTextEncoder, VPSchedule, FlowSchedule))


def reachable_tensors(obj, path: str = "trainer", seen: set | None = None) -> list[tuple[str, torch.Tensor]]:
    """(path, tensor) for every tensor reachable from `obj` (a trainer, by default): parameters,
    buffers, and whatever rzero's own objects hold in attributes, dicts and lists; third-party
    modules contribute their parameters and buffers. Found by walking, not by asking the
    trainer what it owns, so a module a trainer forgot to declare shows up here."""
    seen = set() if seen is None else seen
    if obj is None or id(obj) in seen or _stays_on_cpu(obj):
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [(path, obj)]
    found: list[tuple[str, torch.Tensor]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            found += reachable_tensors(v, f"{path}[{k}]", seen)
        return found
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found += reachable_tensors(v, f"{path}[{i}]", seen)
        return found
    ours = type(obj).__module__.startswith(("rzero", "test_", "tiny_sd", "__main__"))
    if isinstance(obj, torch.nn.Module):
        for n, t in [*obj.named_parameters(recurse=False), *obj.named_buffers(recurse=False)]:
            found += reachable_tensors(t, f"{path}.{n}", seen)
        for n, m in obj.named_children():
            found += reachable_tensors(m, f"{path}.{n}", seen)
    if ours and hasattr(obj, "__dict__"):
        for k, v in vars(obj).items():
            if k not in ("_parameters", "_buffers", "_modules", "accelerator", "optimizer", "cfg"):
                found += reachable_tensors(v, f"{path}.{k}", seen)
    return found
