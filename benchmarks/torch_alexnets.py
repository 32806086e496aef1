"""PyTorch's side of ``versus_pytorch.py``: the three networks and their timed train step.

``alexnet_owt`` is ``torchvision.models.alexnet``. ``alexnet2012`` and ``alexnet_cifar`` are written
here layer for layer as ``alexnet_jax.models`` has them (PyTorch pads conv1's 224 input to 227,
normalises within each group of channels, and uses grouped convolutions, as the paper).
"""

import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.timing import time_steps

MEANS = {"imagenet": (0.485, 0.456, 0.406), "cifar10": (0.4914, 0.4822, 0.4465)}
STDS = {"imagenet": (0.229, 0.224, 0.225), "cifar10": (0.2470, 0.2435, 0.2616)}


def version() -> str:
    return torch.__version__


class GroupedLRN(nn.Module):
    """The paper's LRN (alpha on the plain sum of squares) within each of ``groups`` channel groups."""

    def __init__(self, groups: int = 2, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__()
        self.groups = groups
        self.lrn = nn.LocalResponseNorm(size, alpha=alpha * size, beta=beta, k=k)  # PyTorch divides alpha by size

    def forward(self, x):
        return torch.cat([self.lrn(part) for part in x.chunk(self.groups, dim=1)], dim=1)


class AlexNet2012(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        pool = nn.MaxPool2d(3, 2)
        self.features = nn.Sequential(
            nn.ZeroPad2d((1, 2, 1, 2)),  # 224 -> 227
            nn.Conv2d(3, 96, 11, stride=4),
            nn.ReLU(inplace=True),
            GroupedLRN(),
            pool,
            nn.Conv2d(96, 256, 5, padding=2, groups=2),
            nn.ReLU(inplace=True),
            GroupedLRN(),
            pool,
            nn.Conv2d(256, 384, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, 3, padding=1, groups=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1, groups=2),
            nn.ReLU(inplace=True),
            pool,
        )
        self.classifier = nn.Sequential(
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class AlexNetCIFAR(nn.Module):
    def __init__(self, num_classes: int = 10, channels=(64, 192, 384, 256, 256), hidden: int = 2048, dropout=0.5):
        super().__init__()
        c1, c2, c3, c4, c5 = channels
        pool = nn.MaxPool2d(3, 2, padding=1)  # 32 -> 16 -> 8 -> 4, as the JAX model's SAME pooling

        def conv(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *conv(3, c1), pool, *conv(c1, c2), pool, *conv(c2, c3), *conv(c3, c4), *conv(c4, c5), pool
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(c5 * 16, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def create(model: str, width: float = 1.0) -> nn.Module:
    """The network; ``width`` scales alexnet_cifar's layers as ``alexnet_jax.models`` does;
    ``cifar10_cpu``: alexnet_cifar as ``configs/cifar10_cpu.py`` shapes it."""
    if model == "alexnet_owt":
        import torchvision  # here: the other two networks need PyTorch alone

        return torchvision.models.alexnet(weights=None)
    if model == "alexnet2012":
        return AlexNet2012()
    if model == "cifar10_cpu":
        from configs import cifar10_cpu  # ml_collections: the benchmark's environment has the project's

        shaped = cifar10_cpu.get_config().model
        return AlexNetCIFAR(channels=tuple(shaped.channels), hidden=shaped.fc_features)
    scaled = lambda n: max(1, round(n * width))
    return AlexNetCIFAR(channels=tuple(scaled(c) for c in (64, 192, 384, 256, 256)), hidden=scaled(2048))


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_tflops(size: int, bfloat16: bool = True, repeats: int = 20) -> float:
    dtype = torch.bfloat16 if bfloat16 else torch.float32
    a, b = (torch.randn(size, size, device=_device(), dtype=dtype) for _ in range(2))

    def product():
        torch.mm(a, b)
        _sync()

    return 2 * size**3 / statistics.median(time_steps(product, 3, repeats)) / 1e12


def _optimizer(net: nn.Module, lr: float, momentum: float, weight_decay: float):
    """SGD with weight decay on the kernels only (the JAX side's mask)."""
    kernels = [p for p in net.parameters() if p.ndim > 1]
    biases = [p for p in net.parameters() if p.ndim <= 1]
    groups = [{"params": kernels, "weight_decay": weight_decay}, {"params": biases, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, foreach=True)


def time_row(model, images, labels, dtype, compile_mode, warmup, steps, sgd, width=1.0) -> dict:
    """Times torch's train step on the uint8 NHWC ``images``; returns times, compile time, peak memory."""
    device = _device()
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    net = create(model, width).to(device, memory_format=torch.channels_last)
    opt = _optimizer(net, *sgd)
    stats = "cifar10" if model in ("alexnet_cifar", "cifar10_cpu") else "imagenet"
    mean = torch.tensor(MEANS[stats], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STDS[stats], device=device).view(1, 3, 1, 1) * 255
    x_u8 = torch.from_numpy(images).to(device).permute(0, 3, 1, 2)  # NHWC memory: channels_last NCHW view
    y = torch.from_numpy(labels).long().to(device)
    bf16 = dtype == "bfloat16"
    forward = net if compile_mode == "none" else torch.compile(net, mode=compile_mode)
    update = opt.step if compile_mode == "none" else torch.compile(opt.step, mode=compile_mode)

    def step():
        x = (x_u8.float() - mean) / std
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        update()
        opt.zero_grad(set_to_none=True)
        _sync()

    started = time.perf_counter()
    step()  # compiles
    compile_s = time.perf_counter() - started
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times = time_steps(step, warmup, steps)
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    return {"compile_s": compile_s, "times": times, "peak_bytes": peak, "step": step}


def threads() -> str:
    return f"torch {torch.get_num_threads()} intra-op threads, {torch.get_num_interop_threads()} inter-op"


def kernel_table(step, steps: int = 10, rows: int = 15) -> str:
    """Time per kernel (GPU) or per operator (CPU) over ``steps`` steps, from PyTorch's profiler."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        for _ in range(steps):
            step()
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    return profile.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=60)
