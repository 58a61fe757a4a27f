"""The command line, tried with the mistakes a user makes (issue 17): none of them loses a run.

Each mistake leaves main() the way argparse's own errors do: SystemExit with status 2 after one
line `prog: error: …` on stderr that names the problem, no traceback, and the checkpoint already
in the run folder byte for byte as it was. The mistakes are caught at the root (scratch/runs.py:
prepare_out, load_checkpoint, layout_mismatch, all raising RunError) and turned into that line
in one place (scratch/__main__.py: main), so scratch and the three ports, which share the command
line, share the checks. Scratch and the PyTorch port are tried on every mistake; TensorFlow and
Keras, slower to import, on one each that reaches their own trainer.

Runs are tiny (a VAE of width 4 for 3 steps, a GAN for 2), trained once per module and copied.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from scratch import runs
from scratch.__main__ import main

pytestmark = pytest.mark.runs

VAE = ["train", "vae", "--steps", "3", "--eval-every", "3", "--hidden", "4", "--batch-size", "16", "--quiet"]
GAN = ["train", "gan", "--data", "ring", "--steps", "2", "--eval-every", "2", "--batch-size", "16", "--quiet"]
PORTS = {"scratch": ("python -m scratch", None), "torch": ("python -m ports.torch", "ports.torch.train"),
         "tensorflow": ("python -m ports.tensorflow", "ports.tensorflow.train"),
         "keras": ("python -m ports.keras", "ports.keras.train")}
ROOT = Path(__file__).resolve().parents[1]


class Cli:
    """main() as `python -m scratch` or `python -m ports.IMPL` runs it, in this process."""

    def __init__(self, implementation):
        self.implementation = implementation
        self.prog, module = PORTS[implementation]
        self.trainers = None
        if module is not None:
            os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
            pytest.importorskip(implementation)
            self.trainers = dict(__import__(module, fromlist=["TRAINERS"]).TRAINERS)
            if implementation == "torch":  # all that python -m ports.torch passes: the conv and diffusion trainers too
                from ports.torch.train_conv import CONV_TRAINERS
                from ports.torch.train_diffusion import DIFFUSION_TRAINERS

                self.trainers.update({**CONV_TRAINERS, **DIFFUSION_TRAINERS})

    def run(self, argv):
        argv = [str(a) for a in argv]
        if self.implementation == "torch":  # as python -m ports.torch runs it: on --device, its trainers bound there
            from ports.torch.distributed import command_line

            return command_line(main, self.trainers, argv)
        return main(argv, prog=self.prog, implementation=self.implementation, trainers=self.trainers)

    def fails(self, argv, capsys, *fragments):
        """Run argv, which must fail as a user's mistake: status 2, one line naming it. Returns the line."""
        capsys.readouterr()
        try:
            code = self.run(argv)  # `score` returns 2 after its line; every other command raises SystemExit(2)
        except SystemExit as raised:
            code = raised.code
        err = capsys.readouterr().err
        assert code == 2, f"{self.prog} {argv}: exit status {code!r}, expected 2; stderr: {err}"
        assert "Traceback" not in err, err
        lines = err.strip().splitlines()
        assert len(lines) == 1, f"{self.prog} {argv}: expected one line on stderr, got {len(lines)}: {err}"
        assert lines[0].startswith(f"{self.prog}: error: ") or lines[0].startswith("error: "), lines[0]
        for fragment in fragments:
            assert fragment in lines[0], f"{fragment!r} not in the message: {lines[0]}"
        return lines[0]


@pytest.fixture(params=["scratch", "torch"])
def cli(request):
    return Cli(request.param)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A VAE run at step 3 and a GAN run at step 2 (float32), by scratch; tests copy them."""
    root = tmp_path_factory.mktemp("trained")
    assert main(VAE + ["--out", str(root / "vae")]) == 0
    assert main(GAN + ["--out", str(root / "gan")]) == 0
    return root


def copy_run(trained, tmp_path, name="vae"):
    folder = tmp_path / name
    shutil.copytree(trained / name, folder)
    return folder


def snapshot(folder):
    """Every file's bytes, to show that a refused run touched nothing."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


# ----------------------------------------------------------------------------------------------
# A folder that holds a run
# ----------------------------------------------------------------------------------------------


def test_a_folder_that_holds_a_run_is_refused(cli, trained, tmp_path, capsys):
    folder = copy_run(trained, tmp_path)
    before = snapshot(folder)
    cli.fails(VAE + ["--steps", "2", "--out", folder], capsys, str(folder), "a vae run at step 3", "--resume",
              "--overwrite")
    cli.fails(GAN + ["--out", folder], capsys, "a vae run at step 3")  # whatever model the new run trains
    assert snapshot(folder) == before


def test_overwrite_replaces_the_run(cli, trained, tmp_path, capsys):
    folder = copy_run(trained, tmp_path)
    assert cli.run(VAE + ["--steps", "2", "--eval-every", "2", "--out", folder, "--overwrite"]) == 0
    arrays = runs.load_checkpoint(folder / runs.CHECKPOINT)
    assert int(arrays["run.step"]) == 2 and str(arrays["run.model"]) == "vae"
    metrics = json.loads((folder / runs.METRICS).read_text())
    assert metrics["steps"] == 2 and metrics["config"]["implementation"] == cli.implementation


def test_resume_and_overwrite_together_are_refused(cli, trained, tmp_path, capsys):
    folder = copy_run(trained, tmp_path)
    before = snapshot(folder)
    with pytest.raises(SystemExit) as raised:  # argparse's own error: a usage line, then the error line
        cli.run(VAE + ["--out", folder, "--resume", "--overwrite"])
    err = capsys.readouterr().err
    assert raised.value.code == 2 and "not allowed with argument" in err.splitlines()[-1] and "Traceback" not in err
    assert snapshot(folder) == before


def test_overwrite_keeps_the_old_run_until_the_new_one_saves(cli, trained, tmp_path, monkeypatch):
    """--overwrite removes nothing up front: a new run that dies before its first checkpoint leaves the old
    run whole; one that dies after it leaves the new run, its metrics.json beside it, resumable."""
    from scratch.train import VAETrainer

    folder = copy_run(trained, tmp_path)
    before = snapshot(folder)
    train_step = VAETrainer.train_step

    def dies_at(step_that_kills):
        def step(self, step):
            if step == step_that_kills:
                raise RuntimeError("killed")  # not a user's mistake: it must come out as itself
            return train_step(self, step)
        return step

    new = VAE + ["--hidden", "6", "--steps", "4", "--eval-every", "2", "--out", folder]
    monkeypatch.setattr(VAETrainer, "train_step", dies_at(1))
    with pytest.raises(RuntimeError, match="killed"):
        cli.run(new + ["--overwrite"])
    assert snapshot(folder) == before
    monkeypatch.setattr(VAETrainer, "train_step", dies_at(3))
    with pytest.raises(RuntimeError, match="killed"):
        cli.run(new + ["--overwrite"])
    assert int(runs.load_checkpoint(folder / runs.CHECKPOINT)["run.step"]) == 2
    metrics = json.loads((folder / runs.METRICS).read_text())
    assert metrics["config"]["hidden"] == 6 and [h["step"] for h in metrics["history"]] == [2]
    monkeypatch.setattr(VAETrainer, "train_step", train_step)
    assert cli.run(new + ["--resume"]) == 0
    assert [h["step"] for h in json.loads((folder / runs.METRICS).read_text())["history"]] == [2, 4]


# ----------------------------------------------------------------------------------------------
# Unknown data or architecture, an --out that cannot be a folder, a --resume with nothing to resume
# ----------------------------------------------------------------------------------------------

UNKNOWN = {
    "vae data": (["train", "vae", "--data", "nope"], "--data must be 'digits'"),
    "vae idx folder": (["train", "vae", "--data", "mnist:/no/such/folder"], "is not a folder"),
    "gan data": (["train", "gan", "--data", "nope"], "--data must be one of"),
    "transformer data": (["train", "transformer", "--data", "nope"], "--data must be numbers"),
    "gpt data": (["train", "gpt", "--data", "nope"], "--data must be names"),
    "gpt text file": (["train", "gpt", "--data", "text:/no/such/file.txt"], "no such file"),
    "conv transformer": (["train", "transformer", "--arch", "conv"], "--arch conv is for the image models"),
    "conv on digits": (["train", "vae", "--arch", "conv", "--data", "digits"], "--arch conv trains on 28×28 digits"),
    "pack": (["train", "gan", "--batch-size", "15", "--pack", "2"], "--batch-size 15 must be a multiple of --pack 2"),
    "conv likelihood": (["train", "vae", "--arch", "conv", "--data", "mnist", "--likelihood", "gaussian"],
                        "--likelihood bernoulli"),
}


@pytest.mark.parametrize("case", sorted(UNKNOWN))
def test_unknown_data_or_architecture_is_one_line(cli, case, tmp_path, capsys):
    argv, fragment = UNKNOWN[case]
    cli.fails(argv + ["--out", tmp_path / "run", "--quiet"], capsys, fragment)
    assert not (tmp_path / "run").exists()


def test_an_unknown_architecture_is_argparses_error(cli, tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        cli.run(["train", "vae", "--arch", "resnet", "--out", tmp_path])
    err = capsys.readouterr().err
    assert raised.value.code == 2 and "invalid choice: 'resnet'" in err.splitlines()[-1] and "Traceback" not in err


def test_an_out_that_is_a_file_is_one_line(cli, tmp_path, capsys):
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    cli.fails(VAE + ["--out", file], capsys, str(file), "is a file")
    cli.fails(VAE + ["--out", file / "run"], capsys, "lies inside", "a file")
    cli.fails(VAE + ["--out", file, "--resume"], capsys, "is a file")
    assert file.read_text() == "mine"


def test_resume_without_a_checkpoint_is_one_line(cli, tmp_path, capsys):
    cli.fails(VAE + ["--out", tmp_path / "empty", "--resume"], capsys, "--resume: no checkpoint at",
              str(tmp_path / "empty" / runs.CHECKPOINT))
    assert not (tmp_path / "empty").exists()


def test_resume_past_the_checkpoint_is_one_line(cli, trained, tmp_path, capsys):
    folder = copy_run(trained, tmp_path)
    before = snapshot(folder)
    cli.fails(VAE + ["--out", folder, "--resume", "--steps", "2"], capsys, "at step 3, past --steps 2")
    assert snapshot(folder) == before


# ----------------------------------------------------------------------------------------------
# A checkpoint that is damaged, of another model, or of another shape or dtype
# ----------------------------------------------------------------------------------------------


def damage(path, how):
    """Damage a checkpoint.npz in place, as a full disk, a killed copy or a stray edit would."""
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "not a zip":
        path.write_text("checkpoint")
    elif how == "flipped byte":  # inside an array's bytes: the member's CRC-32 no longer matches
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("enc.W1.npy")
        start = info.header_offset  # the local header: 30 bytes, then the name and the extra field, then the data
        name_length, extra_length = struct.unpack("<HH", data[start + 26 : start + 30])
        offset = start + 30 + name_length + extra_length + info.compress_size - 3  # a byte of the last float
        path.write_bytes(data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1:])
    elif how == "bad npy inside":  # a whole, valid zip whose member is not a .npy
        with zipfile.ZipFile(path) as z:
            members = {name: z.read(name) for name in z.namelist()}
        members["enc.W1.npy"] = b"\x93NUMPY\x01\x00garbage"
        with zipfile.ZipFile(path, "w") as z:
            for name, content in members.items():
                z.writestr(name, content)
    elif how == "pickled object":  # an object array inside: never unpickled (allow_pickle=False)
        with zipfile.ZipFile(path, "a") as z, z.open("evil.npy", "w") as f:
            np.lib.format.write_array(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)


DAMAGE = ("truncated", "empty", "not a zip", "flipped byte", "bad npy inside", "pickled object")


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_checkpoint_is_one_line(cli, how, trained, tmp_path, capsys):
    folder = copy_run(trained, tmp_path)
    damage(folder / runs.CHECKPOINT, how)
    before = snapshot(folder)
    cli.fails(VAE + ["--out", folder, "--resume", "--steps", "4"], capsys, str(folder / runs.CHECKPOINT),
              "truncated or corrupt")
    cli.fails(VAE + ["--out", folder], capsys, str(folder), "a checkpoint that does not load", "--overwrite")
    assert snapshot(folder) == before
    assert cli.run(VAE + ["--out", folder, "--overwrite"]) == 0  # which --overwrite then replaces
    assert int(runs.load_checkpoint(folder / runs.CHECKPOINT)["run.step"]) == 3


def test_a_checkpoint_of_another_model_is_one_line(cli, trained, tmp_path, capsys):
    """The issue's `KeyError: 'gen.W1'`: --resume of a GAN from a VAE's folder."""
    folder = copy_run(trained, tmp_path)
    before = snapshot(folder)
    cli.fails(GAN + ["--out", folder, "--resume", "--steps", "4"], capsys, "holds a vae run at step 3",
              "not a gan checkpoint")
    gan = copy_run(trained, tmp_path, "gan")
    cli.fails(VAE + ["--out", gan, "--resume", "--steps", "4"], capsys, "holds a gan run at step 2", "not a vae")
    assert snapshot(folder) == before


def test_a_checkpoint_written_before_runs_recorded_the_model_still_loads(cli, trained, tmp_path, capsys):
    folder = copy_run(trained, tmp_path)
    arrays = runs.load_checkpoint(folder / runs.CHECKPOINT)
    del arrays["run.model"]  # as every checkpoint written before issue 17
    runs.save_checkpoint(folder / runs.CHECKPOINT, arrays)
    cli.fails(GAN + ["--out", folder, "--resume", "--steps", "4"], capsys, "holds a vae run at step 3")  # from its keys
    cli.fails(VAE + ["--out", folder], capsys, "a vae run at step 3")
    assert cli.run(VAE + ["--out", folder, "--resume", "--steps", "4"]) == 0
    assert str(runs.load_checkpoint(folder / runs.CHECKPOINT)["run.model"]) == "vae"


OTHER_SHAPE = {
    "z-dim": ("vae", ["--z-dim", "3"], ("has shape", "z_dim 2 there, 3 here")),
    "hidden": ("vae", ["--hidden", "8"], ("has shape", "hidden 4 there, 8 here")),
    "dtype": ("gan", ["--dtype", "float64"], ("is float32 there, float64 here", "dtype 'float32' there, 'float64' here")),
}


@pytest.mark.parametrize("case", sorted(OTHER_SHAPE))
def test_a_checkpoint_of_another_shape_or_dtype_is_one_line(cli, case, trained, tmp_path, capsys):
    model, options, fragments = OTHER_SHAPE[case]
    folder = copy_run(trained, tmp_path, model)
    before = snapshot(folder)
    argv = (VAE if model == "vae" else GAN) + ["--out", folder, "--resume", "--steps", "5"] + options
    cli.fails(argv, capsys, "--resume", "was trained with other options", *fragments)
    assert snapshot(folder) == before


# ----------------------------------------------------------------------------------------------
# sample, translate and score with a checkpoint of the wrong kind, or damaged
# ----------------------------------------------------------------------------------------------


def test_sample_translate_and_score_refuse_the_wrong_checkpoint_in_one_line(cli, trained, tmp_path, capsys):
    vae = trained / "vae" / runs.CHECKPOINT
    broken = copy_run(trained, tmp_path) / runs.CHECKPOINT
    damage(broken, "truncated")
    samples = tmp_path / "samples.npy"
    np.save(samples, np.random.default_rng(0).random((10, 28, 28)))
    cli.fails(["sample", vae], capsys, "is not a GPT checkpoint", "holds a vae run at step 3")
    cli.fails(["sample", broken], capsys, "truncated or corrupt")
    cli.fails(["sample", tmp_path / "missing.npz"], capsys, "no checkpoint")
    cli.fails(["translate", "one", "--checkpoint", vae], capsys, "is not a Transformer checkpoint",
              "holds a vae run at step 3")
    cli.fails(["translate", "one", "--checkpoint", broken], capsys, "truncated or corrupt")
    cli.fails(["score", samples, "--classifier", vae], capsys, "not a digit-classifier checkpoint", "a vae run")
    cli.fails(["score", samples, "--classifier", broken], capsys, "truncated or corrupt")
    cli.fails(["draw", "three", "--checkpoint", vae, "--out", tmp_path / "3.png"], capsys, "not a guided U-Net checkpoint")
    cli.fails(["draw", "three", "--checkpoint", broken, "--out", tmp_path / "3.png"], capsys, "truncated or corrupt")
    assert not (tmp_path / "3.png").exists()


def test_a_new_model_inherits_the_checks(cli, trained, tmp_path, capsys):
    """The diffusion model came after these checks; it goes through prepare_out and run_training like the rest."""
    folder = copy_run(trained, tmp_path)
    before = snapshot(folder)
    tiny = ["train", "diffusion", "--data", "ring", "--steps", "2", "--quiet", "--out", folder]
    cli.fails(tiny, capsys, "already holds a vae run at step 3")
    cli.fails(tiny + ["--resume"], capsys, "holds a vae run at step 3, not a diffusion checkpoint")
    assert snapshot(folder) == before


# ----------------------------------------------------------------------------------------------
# The real command, in its own process; TensorFlow and Keras on their own trainers
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["scratch", "ports.torch"])
def test_the_command_prints_one_line_and_exits_2(module, trained, tmp_path):
    if module != "scratch":
        pytest.importorskip("torch")
    folder = copy_run(trained, tmp_path)
    before = snapshot(folder)
    for argv, fragment in ((GAN + ["--out", folder, "--resume", "--steps", "4"], "not a gan checkpoint"),
                           (VAE + ["--out", folder], "already holds a vae run at step 3")):
        done = subprocess.run([sys.executable, "-m", module, *map(str, argv)], capture_output=True, text=True,
                              cwd=ROOT, env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"}, timeout=300)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert len(lines) == 1 and lines[0].startswith(f"python -m {module}: error: ") and fragment in lines[0], lines
    assert snapshot(folder) == before


@pytest.mark.parametrize("implementation", ["tensorflow", "keras"])
def test_tensorflow_and_keras_trainers_refuse_another_shape(implementation, trained, tmp_path, capsys):
    """Reaches the port's own trainer: its fresh state() is the layout a resumed checkpoint must have."""
    cli = Cli(implementation)
    folder = copy_run(trained, tmp_path)
    before = snapshot(folder)
    cli.fails(VAE + ["--out", folder, "--resume", "--steps", "5", "--z-dim", "3"], capsys,
              "was trained with other options", "has shape", "z_dim 2 there, 3 here")
    cli.fails(VAE + ["--out", folder], capsys, "already holds a vae run at step 3")
    assert snapshot(folder) == before
