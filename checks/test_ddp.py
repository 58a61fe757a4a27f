"""Two ranks of DistributedDataParallel take the steps of one process (ports/torch/distributed.py).

Each check launches torchrun (`python -m torch.distributed.run`, the program behind the `torchrun`
command) with 2 ranks on the gloo backend, on the CPU, on a free port chosen here, every launch
bounded by LAUNCH_TIMEOUT_S; the one-process reference runs in this process, through the same
command line (`python -m ports.torch train …`).

What "the same steps" means here, in float64: after 20 steps (two evaluations and checkpoints)
every array of the final checkpoint (parameters, batch norm's running statistics, both Adams'
moments), samples.npy where the run writes one, and every figure of metrics.json (each
evaluation's mean training loss, ELBOs, held-out loss, discriminator outputs) agrees with the
one-process run's to TOLERANCE, relative to the largest magnitude of that array or figure
(max |a − b| ≤ TOLERANCE · max |a|).

Why TOLERANCE = 1e-10. The two runs compute the same sums in another order: each rank sums its
half of the batch and the halves are added after (and the GPT's ranks divide by their own token
counts), so a gradient differs from the single run's by a few units in the last place (float64:
1.1e-16 relative), and Adam carries that through 20 steps. Measured on this machine: at most
1.4e-14 (the GPT's W_q), 1e-15 for the VAE and the DCGAN, so 1e-10 leaves a margin of 10⁴. A real
mistake is far outside it: a rank with the wrong rows or the wrong noise moves weights by ~lr
(1e-3 and more) a step, and gradients summed instead of averaged double Adam's first moments and
quadruple its second. `test_a_rank_that_dies…` checks that 10 steps move the weights by far more.

One exception: attention's key bias b_k (ZERO_GRADIENT). Adding b_k to every key adds q·b_k to
all the scores of a query, and softmax ignores a shift, so its gradient is zero in exact
arithmetic; what it holds is rounding noise (Adam turns a gradient of 1e-17, far below its ε,
into a step of lr · g / ε), different in any other order of summation. It is compared in
absolute terms: |a − b| ≤ TOLERANCE (it stays below 1e-12).

Test-only hook: GENAI_DDP_FAIL_AT="RANK:STEP" makes that rank raise before that step
(ports/torch/distributed.py reads it; nothing else does).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("torch")

from ports.torch.distributed import FAIL_AT, Launch, command_line  # noqa: E402
from ports.torch.train import TRAINERS  # noqa: E402
from ports.torch.train_conv import CONV_TRAINERS  # noqa: E402
from scratch.__main__ import main  # noqa: E402

pytestmark = pytest.mark.distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-10  # float64, relative to each array's largest magnitude: see the module docstring
ZERO_GRADIENT = ".attn.b_k"  # arrays whose gradient is zero in exact arithmetic, compared in absolute terms
LAUNCH_TIMEOUT_S = 180  # one torchrun launch; a hung collective fails the check instead of the session
VARYING = ("process_cpu_s",)  # figures of time, not of training

# 20 steps, evaluated and checkpointed at 10 and 20, float64, small enough to take seconds.
RUNS = {
    # the digits' 1,437 training images in batches of 128: step 12 takes the epoch's last 29, shared 14 + 15
    # (the communication hook's weights 14/29 and 15/29 are what keep that step the single run's)
    "vae": ["train", "vae", "--batch-size", "128"],
    # names of every length: the ranks' shares of the non-<pad> targets differ at every step
    "gpt": ["train", "gpt", "--data", "names:first", "--dtype", "float64", "--batch-size", "32", "--layers", "1",
            "--d-model", "32", "--heads", "2", "--warmup", "5"],
    # batch norm over both ranks' shares (AllReduceBatchNorm on the CPU), both players wrapped in DDP
    "dcgan": ["train", "gan", "--arch", "conv", "--data", "mnist", "--dtype", "float64", "--batch-size", "16",
              "--width", "8", "--z-dim", "16"],
}
COMMON = ["--steps", "20", "--eval-every", "10", "--seed", "0", "--device", "cpu", "--quiet"]
ALL_TRAINERS = {**TRAINERS, **CONV_TRAINERS}


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args, env=None, ranks=2):
    """Launch `torchrun --nproc-per-node RANKS -m ports.torch ARGS`; (returncode, output, seconds)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(ranks),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "ports.torch", *args]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    began = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)  # its own process group: the ranks die with it
    try:
        output, _ = process.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"torchrun {' '.join(args)} ran past {LAUNCH_TIMEOUT_S} s; its output ended:\n{output[-3000:]}")
    return process.returncode, output, time.perf_counter() - began


def one_process(args):
    """`python -m ports.torch ARGS`, in this process; the seconds it took."""
    began = time.perf_counter()
    assert command_line(main, ALL_TRAINERS, list(args)) in (0, None)
    return time.perf_counter() - began


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The one-process reference run of each model, trained once for the module."""
    done = {}

    def run(model):
        if model not in done:
            out = tmp_path_factory.mktemp(f"{model}-one")
            seconds = one_process([*RUNS[model], *COMMON, "--out", str(out)])
            done[model] = (str(out), seconds)
        return done[model][0]

    return run


def load(out):
    with np.load(os.path.join(out, "checkpoint.npz"), allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    with open(os.path.join(out, "metrics.json")) as f:
        return arrays, json.load(f)


def relative_error(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = float(np.max(np.abs(a))) if a.size else 0.0
    return float(np.max(np.abs(a - b))) / scale if scale > 0 else float(np.max(np.abs(b), initial=0.0))


def assert_same_checkpoint(expected, actual, what):
    assert set(actual) == set(expected), f"{what}: names differ: {sorted(set(actual) ^ set(expected))}"
    for name, want in expected.items():
        got = actual[name]
        assert got.shape == want.shape and got.dtype == want.dtype, f"{what}: {name} is {got.dtype} {got.shape}, " \
                                                                    f"one process wrote {want.dtype} {want.shape}"
        if want.dtype.kind == "f":
            error = float(np.max(np.abs(want - got))) if name.endswith(ZERO_GRADIENT) else relative_error(want, got)
            assert error <= TOLERANCE, f"{what}: {name}: max |2 ranks − 1 process| / max |1 process| = {error:.2e} " \
                                       f"> {TOLERANCE:.0e}"
        else:
            assert np.array_equal(got, want), f"{what}: {name} differs"


def assert_same_figures(expected, actual, where):
    """Every number of one evaluation within TOLERANCE (relative), everything else equal."""
    if isinstance(expected, dict):
        assert set(actual) == set(expected), f"{where}: keys differ: {sorted(set(actual) ^ set(expected))}"
        for key in expected:
            if key not in VARYING:
                assert_same_figures(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, float):
        error = relative_error(expected, actual)
        assert error <= TOLERANCE, f"{where}: 2 ranks {actual!r}, 1 process {expected!r}: relative error {error:.2e} " \
                                   f"> {TOLERANCE:.0e}"
    else:
        assert actual == expected, f"{where}: 2 ranks {actual!r}, 1 process {expected!r}"


def assert_same_run(expected_out, actual_out, what):
    (want, want_metrics), (got, got_metrics) = load(expected_out), load(actual_out)
    assert_same_checkpoint(want, got, what)
    # a resumed run's history keeps the evaluations its metrics.json held when the run stopped
    steps = [h["step"] for h in got_metrics["history"]]
    assert steps in ([10, 20], [20]), f"{what}: evaluated at steps {steps}, not 10 and 20"
    want_history = {h["step"]: h for h in want_metrics["history"]}
    for got_h in got_metrics["history"]:
        assert_same_figures(want_history[got_h["step"]], got_h, f"{what} metrics.json history[step {got_h['step']}]")
    config, want_config = dict(got_metrics["config"]), dict(want_metrics["config"])
    assert (config.pop("world_size"), config.pop("device")) == (2, "cpu"), f"{what}: metrics.json config {got_metrics['config']}"
    assert (want_config.pop("world_size"), want_config.pop("device")) == (1, "cpu")
    assert config == want_config, f"{what}: configs differ"
    if os.path.exists(os.path.join(expected_out, "samples.npy")):
        want, got = (np.load(os.path.join(folder, "samples.npy")) for folder in (expected_out, actual_out))
        error = relative_error(want, got)
        assert error <= TOLERANCE, f"{what}: samples.npy relative error {error:.2e} > {TOLERANCE:.0e}"


@pytest.mark.parametrize("model", ["gpt", "dcgan"])  # the VAE's 2-rank run: test_a_rank_that_dies…, stopped and resumed
def test_two_ranks_take_the_steps_of_one_process(model, single, tmp_path):
    expected = single(model)
    out = tmp_path / "two-ranks"
    rc, output, _ = torchrun([*RUNS[model], *COMMON, "--out", str(out)], env={"TMPDIR": str(tmp_path)})
    assert rc == 0, f"torchrun {model} failed ({rc}):\n{output[-4000:]}"
    assert_same_run(expected, str(out), f"{model}, 2 ranks")
    written = sorted(os.listdir(out))  # rank 0's files only, no temporary left behind
    assert written == sorted(os.listdir(expected)), f"{model}: the 2-rank run wrote {written}"
    leftovers = [name for name in os.listdir(tmp_path) if name.startswith("genai-rank")]
    assert not leftovers, f"{model}: rank 1's private folder was not removed: {leftovers}"
    assert output.count('"out"') == 1, f"{model}: only rank 0 prints the run's summary:\n{output[-2000:]}"


def test_a_rank_that_dies_fails_the_launch_and_keeps_the_last_checkpoint(single, tmp_path):
    """Rank 1 raises before step 12 (GENAI_DDP_FAIL_AT=1:12): torchrun fails and names the rank and the error;
    OUT/checkpoint.npz is step 10's, whole. Then `--resume` under torchrun: the VAE's 20 steps on 2 ranks,
    10 before the failure and 10 after, end where one process's 20 end (step 12, the epoch's last batch of
    29 images, is shared 14 + 15: the communication hook's weights 14/29 and 15/29 keep it exact)."""
    expected = single("vae")
    out = tmp_path / "dies"
    args = [*RUNS["vae"], *COMMON, "--out", str(out)]
    rc, output, _ = torchrun(args, env={FAIL_AT: "1:12"})
    assert rc != 0, f"torchrun exited {rc} though rank 1 raised:\n{output[-3000:]}"
    assert "rank 1 stops before step 12" in output, f"the launcher's output does not say why:\n{output[-3000:]}"
    assert "rank: 1" in output or "local_rank: 1" in output, f"torchrun's summary does not name rank 1:\n{output[-3000:]}"
    with np.load(out / "checkpoint.npz", allow_pickle=False) as data:  # loads: not half-written
        arrays = {name: data[name] for name in data.files}
    assert int(arrays["run.step"]) == 10, f"the checkpoint left is step {int(arrays['run.step'])}'s, not step 10's"
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")], f"a temporary file was left in {sorted(os.listdir(out))}"
    final, _ = load(expected)
    moved = max(relative_error(final[name], arrays[name]) for name in final if final[name].dtype.kind == "f")
    assert moved > 1e4 * TOLERANCE, f"steps 11–20 moved the checkpoint by only {moved:.1e}: the tolerance would hide a mistake"

    rc, output, _ = torchrun([*args, "--resume"], env={"TMPDIR": str(tmp_path)})
    assert rc == 0, f"torchrun --resume failed ({rc}):\n{output[-4000:]}"
    assert_same_run(expected, str(out), "vae, 2 ranks, died at step 12 and resumed from step 10")
    assert not [name for name in os.listdir(tmp_path) if name.startswith("genai-rank")], "rank 1's folder was left"


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps"])
def test_a_device_that_is_not_there_is_one_line(device, tmp_path, capsys):
    import torch

    there = torch.cuda.device_count() > (1 if device == "cuda:1" else 0) if device.startswith("cuda") \
        else torch.backends.mps.is_available()
    args = ["train", "vae", "--steps", "1", "--eval-every", "1", "--quiet", "--device", device, "--out", str(tmp_path / "run")]
    if there:  # a machine with the device trains there, and its checkpoint loads on the CPU
        one_process(args)
        load(str(tmp_path / "run"))
        return
    with pytest.raises(SystemExit) as raised:
        one_process(args)
    message = str(raised.value)
    assert f"--device {device}" in message and "\n" not in message, f"not one line naming the option: {message!r}"
    assert not os.path.exists(tmp_path / "run" / "checkpoint.npz")


def test_device_cpu_is_the_default_and_is_recorded(tmp_path):
    one_process(["train", "vae", "--steps", "2", "--eval-every", "2", "--quiet", "--out", str(tmp_path)])
    _, metrics = load(str(tmp_path))
    assert (metrics["config"]["device"], metrics["config"]["world_size"]) == ("cpu", 1)


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "mps"])
def test_scratch_and_the_other_ports_refuse_other_devices(device, tmp_path):
    """scratch passes no trainers and TensorFlow and Keras a plain dict: neither places its models, so --device
    must be cpu (the check happens before any data loads)."""
    for trainers in (None, {"vae": object}):
        with pytest.raises(SystemExit) as raised:
            main(["train", "vae", "--device", device, "--out", str(tmp_path / "run")], trainers=trainers)
        message = str(raised.value)
        assert "trains on the cpu only" in message and "ports.torch" in message, message
    main(["train", "vae", "--device", "cpu", "--steps", "1", "--eval-every", "1", "--quiet", "--out", str(tmp_path / "cpu")])


def test_unknown_device_is_one_line(tmp_path):
    with pytest.raises(SystemExit) as raised:
        command_line(main, ALL_TRAINERS, ["train", "vae", "--device", "tpu", "--out", str(tmp_path)])
    assert "--device 'tpu'" in str(raised.value) and "cpu, cuda, cuda:N or mps" in str(raised.value)


def test_the_batch_must_divide_by_the_world_size(monkeypatch):
    """Checked before the process group starts: torchrun's variables are enough to refuse."""
    import argparse

    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    args = argparse.Namespace(model="vae", device="cpu", batch_size=33, pack=None, out="unused", resume=False)
    with pytest.raises(SystemExit, match=r"--batch-size 33 must divide by the world size 2"):
        Launch(TRAINERS).bind(args)
    args = argparse.Namespace(model="gan", device="cpu", batch_size=6, pack=2, out="unused", resume=False)
    with pytest.raises(SystemExit, match=r"not a multiple of --pack 2"):
        Launch(TRAINERS).bind(args)
