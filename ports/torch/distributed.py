"""Past one machine: `--device`, and DistributedDataParallel under torchrun, taking the steps of one process.

Not math: a small layer around the trainers of ports/torch (train.py, train_conv.py, train_diffusion.py),
whose math lines it leaves alone: they call `self.tensor`, `self.ranks.shard` and `self.train_module`.

    python -m ports.torch train gpt --device cuda                  one process, one GPU
    torchrun --nproc-per-node 2 -m ports.torch train gpt ...       two processes (ranks), DDP

One process puts its modules, batches and noise on `--device` and nothing else changes. Under
torchrun (which sets RANK, WORLD_SIZE and LOCAL_RANK in every process it starts) each rank:

- joins the process group: gloo on the CPU, nccl on GPUs (a bare `--device cuda` is cuda:LOCAL_RANK);
- builds the same modules from the same seed and wraps them in DistributedDataParallel, which
  averages the gradients across ranks during backward (batch norm becomes SyncBatchNorm);
- computes the step's whole batch and noise, exactly as one process does (scratch/runs.py picks
  both from the step number), and takes its share: rows [B·r/W, B·(r+1)/W) of both, so the ranks
  together see the single run's batch, each sample with the single run's noise;
- lets rank 0 alone write the run's files (metrics.json, checkpoint.npz, samples.npy, atomically
  as always): the other ranks run the same loop into a private folder, deleted at the end, and
  skip the evaluations (which read the plain module, no collective: rank 0 evaluates alone).

Why the ranks take the single run's step. Every loss here is a mean over its terms (rows, or the
GPT's non-<pad> targets): L = Σ_i ℓ_i / N. Rank r's loss is the mean over its own N_r terms, so

    L = Σ_r (N_r / N) · L_r        and        ∇L = Σ_r w_r ∇L_r,   w_r = N_r / N.

DDP's default reduction is the plain mean Σ_r ∇L_r / W, right only when every N_r = N / W; the
communication hook below sums w_r ∇L_r instead, so an uneven share (the last batch of an epoch,
the GPT's rows of different lengths) still gives the single run's gradient. The batch size must
divide by the world size all the same: batch norm's synchronised backward, like DDP's default,
takes the shares to be equal, and equal shares keep every rank equally busy.

`--resume` works under torchrun: every rank reads OUT/checkpoint.npz (a folder every node can
read) and the ranks check that they read the same bytes.

Test-only hook: GENAI_DDP_FAIL_AT="RANK:STEP" makes that rank raise just before that step
(checks/test_ddp.py uses it to show that a dead rank fails the launch and leaves the last good
checkpoint intact). Nothing else reads it.
"""

import copy
import functools
import hashlib
import inspect
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
import torch.distributed as dist

FAIL_AT = "GENAI_DDP_FAIL_AT"
DEVICE_KINDS = ("cpu", "cuda", "mps")


def torchrun_environment():
    """(rank, world_size, local_rank) when torchrun started this process, else None."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    if not all(name in os.environ for name in names):
        return None
    return tuple(int(os.environ[name]) for name in names)


def resolve_device(name, local_rank=None):
    """The torch.device of --device NAME (cpu, cuda, cuda:N, mps), or SystemExit with one line saying why not.

    local_rank: under torchrun, a bare "cuda" means this rank's own GPU, cuda:LOCAL_RANK.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise SystemExit(f"--device {name!r} is not a device: give cpu, cuda, cuda:N or mps")
    if device.type not in DEVICE_KINDS or (device.type != "cuda" and device.index not in (None, 0)):
        raise SystemExit(f"--device {name!r}: the PyTorch trainers run on cpu, cuda, cuda:N or mps")
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise SystemExit(f"--device {name}: this PyTorch has no Apple GPU (torch.backends.mps.is_available() is False)")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: no CUDA GPU is available to PyTorch (torch.cuda.is_available() is False); "
                         f"train with --device cpu")
    index = device.index if device.index is not None else (local_rank or 0)
    if index >= torch.cuda.device_count():
        raise SystemExit(f"--device {name}: cuda:{index} does not exist, PyTorch sees {torch.cuda.device_count()} GPU(s)")
    return torch.device("cuda", index)


class Ranks:
    """Where this process trains and its share of each step: the whole of it alone, or one rank's under torchrun.

    device: torch.device; rank, world_size: this process's place among the ranks (0 and 1 alone).
    weight: this rank's share w_r = N_r / N of the current step's loss terms, set by `shard`; DDP's
    communication hook multiplies the rank's gradients by it before summing them over the ranks.
    """

    def __init__(self, device, rank=0, world_size=1, group=None):
        self.device, self.rank, self.world_size, self.group = device, rank, world_size, group
        self.distributed = group is not None
        self.weight = 1.0
        self._batch_norm_group = None

    def shard(self, *arrays, terms=None):
        """This rank's rows of each array of the step (its whole batch and noise, as one process takes them).

        arrays: NumPy arrays with the same first axis, B. terms: (B, ...) booleans, the terms of the
        loss in each row (the GPT's non-<pad> targets); by default each row is one term. Sets
        self.weight to this rank's share of the terms. One process gets the arrays back unchanged.
        """
        n = len(arrays[0])
        if self.distributed:
            lo, hi = n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size
            if hi == lo:
                raise ValueError(f"a batch of {n} rows cannot be shared by {self.world_size} ranks: rank {self.rank} "
                                 f"would get none (the last batch of an epoch is the remainder; change --batch-size)")
            counts = np.ones(n) if terms is None else np.asarray(terms).reshape(n, -1).sum(axis=1)  # (B,)
            self.weight = float(counts[lo:hi].sum() / counts.sum())  # w_r = N_r / N
            arrays = tuple(a[lo:hi] for a in arrays)
        return arrays[0] if len(arrays) == 1 else arrays

    def total(self, loss, weight=None):
        """The step's loss over all ranks, Σ_r w_r L_r = the single run's mean (a float; alone, `loss` itself)."""
        if not self.distributed:
            return loss
        t = torch.tensor([(self.weight if weight is None else weight) * float(loss)], dtype=torch.float64,
                         device=self.device)
        dist.all_reduce(t, group=self.group)
        return float(t.item())

    def replicate(self, module):
        """The module a training step calls: `module` alone, DistributedDataParallel(module) under torchrun.

        Convert batch norm first (`synchronise_batch_norm`): DDP must wrap the module it trains.
        Buffers are not broadcast at each forward: synchronised batch norm moves every rank's running
        statistics with the same global statistics, so they stay equal without it.
        """
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # the option's name changed in PyTorch 2.13 (forward_sync_buffers); both mean: no broadcast at each forward
        named = inspect.signature(DistributedDataParallel.__init__).parameters
        no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in named else {"broadcast_buffers": False}
        ddp = DistributedDataParallel(module, device_ids=device_ids, process_group=self.group, **no_sync)
        ddp.register_comm_hook(self, weighted_allreduce)
        return ddp

    def synchronise_batch_norm(self, module):
        """`module` with its batch norms computing the statistics of the whole batch, over all ranks.

        On GPUs torch's own nn.SyncBatchNorm (convert_sync_batchnorm); it refuses CPU tensors, so on
        the CPU AllReduceBatchNorm below, the same math through gloo. Alone: `module` unchanged.
        The converted layers keep the very Parameter and buffer tensors, so an optimizer built on
        the parameters before or after the conversion trains them all the same.
        """
        if not self.distributed:
            return module
        if self.device.type == "cuda":
            return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group=self.group)
        if self._batch_norm_group is None:  # its own group: its collectives never interleave with DDP's
            self._batch_norm_group = dist.new_group(backend="gloo")
        return AllReduceBatchNorm.convert(module, self._batch_norm_group)

    def fail_if_asked(self, step):
        """The test-only hook GENAI_DDP_FAIL_AT="RANK:STEP" (see the module docstring)."""
        asked = os.environ.get(FAIL_AT)
        if asked and asked == f"{self.rank}:{step}":
            raise RuntimeError(f"rank {self.rank} stops before step {step}: asked to by {FAIL_AT}={asked} (a test hook)")


def weighted_allreduce(ranks, bucket):
    """DDP's communication hook: Σ_r w_r ∇L_r over the ranks, w_r = ranks.weight (DDP's default: Σ_r ∇L_r / W)."""
    tensor = bucket.buffer().mul_(ranks.weight)
    work = dist.all_reduce(tensor, group=ranks.group, async_op=True)
    return work.get_future().then(lambda future: future.value()[0])


class AllReduceSum(torch.autograd.Function):
    """S = Σ_r x_r over the ranks, differentiable. Every rank's loss reads S, so ∂L/∂x_r = Σ_r' ∂L_r'/∂S:
    the backward is an all-reduce of the gradients too (as torch.distributed.nn's, now deprecated)."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad):
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, group=ctx.group)
        return total, None


class AllReduceBatchNorm(torch.nn.BatchNorm2d):
    """nn.SyncBatchNorm's math on any device, through differentiable all-reduces (AllReduceSum).

    In training, per channel over the batch of every rank (N = Σ_r B_r·H·W values):
        μ = Σ x / N,   σ² = Σ (x − μ)² / N  (biased),   y = γ (x − μ) / √(σ² + ε) + β,
    the running statistics moved with μ and the unbiased N/(N − 1)·σ², as nn.BatchNorm2d does.
    The all-reduce's backward is an all-reduce of the gradients, so each rank's backward carries
    every rank's share of ∂L/∂μ and ∂L/∂σ². In evaluation: nn.BatchNorm2d (running statistics).
    """

    group = None

    @classmethod
    def convert(cls, module, group):
        """Replace every nn.BatchNorm2d inside `module` by one of these, sharing its parameters and buffers."""
        for name, child in module.named_children():
            if isinstance(child, torch.nn.BatchNorm2d) and not isinstance(child, cls):
                synced = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats,
                             device=child.weight.device if child.affine else None,
                             dtype=child.weight.dtype if child.affine else None)
                synced.group = group
                synced.weight, synced.bias = child.weight, child.bias
                synced.running_mean, synced.running_var = child.running_mean, child.running_var
                synced.num_batches_tracked = child.num_batches_tracked
                synced.train(child.training)
                setattr(module, name, synced)
            else:
                cls.convert(child, group)
        return module

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        group = self.group
        all_reduce = lambda t: AllReduceSum.apply(t, group)  # noqa: E731
        self._check_input_dim(x)
        dims, shape = (0, 2, 3), (1, -1, 1, 1)
        n = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64)
        dist.all_reduce(n, group=self.group)  # N, the values per channel over all ranks
        n = float(n.item())
        mean = all_reduce(x.sum(dims)) / n  # (C,)
        var = all_reduce(((x - mean.view(shape)) ** 2).sum(dims)) / n  # (C,), biased
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1.0 - m).add_(m * mean.detach())
                self.running_var.mul_(1.0 - m).add_(m * var.detach() * (n / (n - 1.0)))
        y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)  # (B, C, H, W)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


class DeviceTrainer:
    """Mixed into every PyTorch trainer: --device, and the trainer's part under torchrun.

    A trainer built with `ranks=` (the command line passes one) trains where it says; without,
    on the CPU alone, as before. The trainer puts its modules on the device with `to_device`,
    calls `replicate(module)` for the module its training step runs (DDP under torchrun), feeds
    NumPy arrays through `tensor`, takes its rows of a step's batch with `self.ranks.shard`, and
    hands checkpoints the CPU copies of `on_cpu`, so that a checkpoint written on a GPU resumes
    on the CPU and in scratch.
    """

    def __init__(self, *args, ranks=None, **kwargs):
        self.ranks = Ranks(torch.device("cpu")) if ranks is None else ranks
        self.device = self.ranks.device
        super().__init__(*args, **kwargs)

    def to_device(self, module):
        """`module` moved to the device (in place: its Parameter objects stay the same)."""
        if self.device.type == "mps" and any(p.dtype == torch.float64 for p in module.parameters()):
            raise SystemExit("--device mps holds no float64 tensors: train this model with --dtype float32 or on "
                             "--device cpu")
        return module.to(self.device)

    def replicate(self, module):
        return self.ranks.replicate(module)

    def tensor(self, array):
        """A NumPy array as a tensor on the device (on the CPU, the array's own memory, as torch.from_numpy)."""
        return torch.from_numpy(np.asarray(array)).to(self.device)

    def on_cpu(self, module):
        """`module` itself on the CPU, else a CPU copy of it (what the scratch-layout converters read)."""
        return module if self.device.type == "cpu" else copy.deepcopy(module).cpu()

    def train_step(self, step):
        self.ranks.fail_if_asked(step)
        return self.ranks.total(super().train_step(step))

    def evaluate(self):
        return super().evaluate() if self.ranks.rank == 0 else {}  # only rank 0's figures are written

    def config(self):
        return {**super().config(), "device": str(self.device), "world_size": self.ranks.world_size}


class Launch:
    """The PyTorch command line's trainers, bound to --device and, under torchrun, to this process's rank.

    `bind(args)` is what scratch/__main__.py calls with the parsed arguments (a port that places
    its models itself passes such a callable as `trainers`); `close()` ends the process group.
    """

    def __init__(self, trainers):
        self.trainers, self.ranks, self._private, self._stdout = trainers, None, None, None

    def bind(self, args):
        environment = torchrun_environment()
        device = resolve_device(args.device, environment[2] if environment else None)
        if environment is None:
            self.ranks = Ranks(device)
        else:
            self.ranks = self._join(args, device, *environment)
        return {name: functools.partial(trainer, ranks=self.ranks) for name, trainer in self.trainers.items()}

    def _join(self, args, device, rank, world_size, local_rank):
        if args.batch_size % world_size:
            raise SystemExit(f"--batch-size {args.batch_size} must divide by the world size {world_size} (torchrun's "
                             f"ranks): each rank takes an equal share of the batch that one process takes")
        pack = getattr(args, "pack", None) or 1
        if args.model == "gan" and (args.batch_size // world_size) % pack:
            raise SystemExit(f"--batch-size {args.batch_size} over {world_size} ranks leaves {args.batch_size // world_size} "
                             f"samples a rank, not a multiple of --pack {pack}")
        if device.type == "mps":
            raise SystemExit("--device mps: DistributedDataParallel has no backend for Apple GPUs; under torchrun "
                             "train with --device cpu or cuda")
        if device.type == "cuda":
            if world_size > 1 and args.device != "cuda":
                raise SystemExit(f"--device {args.device} under torchrun: give --device cuda, and each rank takes its "
                                 f"own GPU, cuda:LOCAL_RANK")
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        ranks = Ranks(device, rank, world_size, group=dist.group.WORLD)
        if rank > 0:  # the run's files are rank 0's; this rank's copies go to a folder removed at the end
            out, self._private = args.out, tempfile.mkdtemp(prefix=f"genai-rank{rank}-")
            for name in ("checkpoint.npz", "metrics.json"):
                if args.resume and os.path.exists(os.path.join(out, name)):
                    shutil.copyfile(os.path.join(out, name), os.path.join(self._private, name))
            args.out, args.quiet = self._private, True
            self._stdout, sys.stdout = sys.stdout, open(os.devnull, "w")  # rank 0 prints the run's summary
        if args.resume:
            self._same_checkpoint(os.path.join(args.out, "checkpoint.npz"), ranks)
        return ranks

    @staticmethod
    def _same_checkpoint(path, ranks):
        """Every rank must resume from the same bytes (DDP would overwrite differing weights, not the optimizers)."""
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest() if os.path.exists(path) else None
        digests = [None] * ranks.world_size
        dist.all_gather_object(digests, digest)
        if len(set(digests)) > 1:
            raise SystemExit(f"--resume: the ranks read different checkpoints (sha256 {digests}); every node must read "
                             f"the same OUT/checkpoint.npz")

    def close(self):
        if self._stdout is not None:
            sys.stdout.close()
            sys.stdout, self._stdout = self._stdout, None
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)


def command_line(main, trainers, argv=None, prog="python -m ports.torch"):
    """python -m ports.torch: scratch's command line with the PyTorch trainers, on --device, under torchrun or not.

    Under torchrun an exception is recorded for the launcher (torch.distributed.elastic's @record),
    so its summary names the failing rank and the error, not only an exit code.
    """
    launch = Launch(trainers)
    run = functools.partial(main, prog=prog, implementation="torch", trainers=launch.bind)
    if torchrun_environment() is not None:
        from torch.distributed.elastic.multiprocessing.errors import record

        run = record(run)
    try:
        return run(argv)
    finally:
        launch.close()


__all__ = ["AllReduceBatchNorm", "AllReduceSum", "DeviceTrainer", "Launch", "Ranks", "command_line", "resolve_device",
           "torchrun_environment", "weighted_allreduce"]
