"""Stage-1 fine-tuning on FER+: label rules, file checks, the training loop, and the exported backbone."""

from __future__ import annotations

import copy
import json
import os
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from vafusion.cli import build_parser, main
from vafusion.data.ferplus import (
    EMOTIONS,
    FER_CSV,
    FERPLUS_CSV,
    VOTE_COLUMNS,
    FaceDataset,
    FaceSet,
    ferplus_target,
    load_face_data,
    read_fer,
    to_face,
)
from vafusion.errors import VafusionError, WeightsError
from vafusion.models.iresnet import iresnet
from vafusion.train.finetune_face import (
    FaceClassifier,
    FaceTask,
    FinetuneConfig,
    accuracy,
    output_paths,
    train_classifier,
)
from vafusion.weights import load_iresnet

USAGES = ("Training", "PublicTest", "PrivateTest")


def class_face(k: int, rng: np.random.Generator, side: int = 48) -> np.ndarray:
    """An easy face for class ``k`` (0-3): a bright horizontal band at height k, plus mild noise.

    Horizontal flips and small crops keep the band where it is, so augmentation does not hide the class."""
    img = np.full((side, side), 40.0)
    band = side // 4
    img[band * k : band * (k + 1)] = 220.0
    return np.clip(img + rng.normal(0, 8, (side, side)), 0, 255).astype(np.uint8)


def write_fer(
    root: Path,
    usage: list[str],
    classes: list[int],
    seed: int = 0,
    votes: list[list[int]] | None = None,
    names: list[str] | None = None,
) -> Path:
    """A small fer2013.csv + fer2013new.csv pair in the published format."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    fer = ["emotion,pixels,Usage"]
    plus = ["Usage,Image name," + ",".join(VOTE_COLUMNS)]
    for i, (u, k) in enumerate(zip(usage, classes)):
        fer.append(f"{k % 7},{' '.join(map(str, class_face(k, rng).ravel()))},{u}")
        v = votes[i] if votes is not None else [10 if j == k else 0 for j in range(10)]
        name = names[i] if names is not None else f"fer{i:07d}.png"
        plus.append(f"{u},{name}," + ",".join(map(str, v)))
    (root / FER_CSV).write_text("\n".join(fer) + "\n")
    (root / FERPLUS_CSV).write_text("\n".join(plus) + "\n")
    return root


def balanced(n_per: dict[str, int], n_classes: int = 4) -> tuple[list[str], list[int]]:
    usage, classes = [], []
    for u, n in n_per.items():
        for i in range(n):
            usage.append(u)
            classes.append(i % n_classes)
    return usage, classes


class TinyBackbone(nn.Module):
    """A cheap stand-in for IResNet with its interface: (N, 3, 112, 112) -> (N, 512)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 512))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --- FER+ label conventions (microsoft/FERPlus src/ferplus.py) ----------------------------------------------


def votes(**kw: int) -> list[int]:
    return [kw.get(c, 0) for c in VOTE_COLUMNS]


def test_majority_needs_more_than_half_of_the_votes() -> None:
    t = ferplus_target(votes(happiness=6, neutral=4), "majority")
    assert t is not None and t.tolist() == [0, 1, 0, 0, 0, 0, 0, 0]
    assert ferplus_target(votes(happiness=5, neutral=5), "majority") is None
    # single votes are outliers and removed first: 5 of the 9 remaining votes is a majority
    t = ferplus_target(votes(sadness=5, anger=4, fear=1), "majority")
    assert t is not None and int(np.argmax(t)) == EMOTIONS.index("sadness")


def test_unknown_or_not_a_face_winners_are_dropped() -> None:
    for mode in ("majority", "soft"):
        assert ferplus_target(votes(NF=8, happiness=2), mode) is None
        assert ferplus_target(votes(unknown=7, neutral=3), mode) is None
        assert ferplus_target(votes(neutral=1, happiness=1), mode) is None  # only outlier votes


def test_soft_labels_follow_ferplus_cross_entropy_mode() -> None:
    t = ferplus_target(votes(happiness=6, surprise=3, neutral=1), "soft")
    np.testing.assert_allclose(t, np.array([0, 6, 3, 0, 0, 0, 0, 0]) / 9, rtol=1e-6)
    # an unknown share among the winners is cut, the emotions renormalised
    t = ferplus_target(votes(anger=5, disgust=2, unknown=2), "soft")
    assert t is not None and t[EMOTIONS.index("anger")] == pytest.approx(5 / 7)
    assert t[EMOTIONS.index("disgust")] == pytest.approx(2 / 7)
    # what is kept must hold more than half of all votes
    assert ferplus_target(votes(anger=5, unknown=3, disgust=2), "soft") is None
    # more than three tied winners: dropped as too ambiguous
    assert ferplus_target(votes(neutral=2, happiness=2, surprise=2, sadness=2, anger=2), "soft") is None
    assert (
        ferplus_target(votes(fear=4), "soft").tolist() == ferplus_target(votes(fear=4), "majority").tolist()
    )


def test_reader_splits_by_usage_and_skips_removed_images(tmp_path: Path) -> None:
    usage = ["Training"] * 4 + ["PublicTest"] * 2 + ["PrivateTest"] * 2
    classes = [0, 1, 2, 3, 0, 1, 2, 3]
    v = [[10 if j == k else 0 for j in range(10)] for k in classes]
    v[1] = votes(NF=9, neutral=1)
    names = [f"fer{i:07d}.png" for i in range(8)]
    names[2] = ""  # FER+ removed this image
    root = write_fer(tmp_path / "fer", usage, classes, votes=v, names=names)
    sets = read_fer(root / FER_CSV, root / FERPLUS_CSV, "majority")
    assert [len(sets[s]) for s in ("train", "val", "test")] == [2, 2, 2]
    assert sets["train"].names == ["fer0000000.png", "fer0000003.png"]
    assert sets["train"].targets.argmax(1).tolist() == [0, 3]
    assert sets["train"].pixels.shape == (2, 48, 48) and sets["train"].pixels.dtype == np.uint8
    img = sets["train"].image(1)
    assert img.shape == (48, 48, 3) and (img[..., 0] == img[..., 2]).all()


# --- bad files: one line naming the file and the fix --------------------------------------------------------


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_missing_columns_name_the_file(tmp_path: Path) -> None:
    root = write_fer(tmp_path / "fer", ["Training", "PublicTest"], [0, 1])
    plus = root / FERPLUS_CSV
    plus.write_text(plus.read_text().replace(",contempt", ""))
    with pytest.raises(VafusionError) as exc:
        read_fer(root / FER_CSV, plus)
    line = _one_line(exc)
    assert str(plus) in line and "missing column(s) contempt" in line and "microsoft/FERPlus" in line


def test_wrong_pixel_count_names_the_line(tmp_path: Path) -> None:
    root = write_fer(tmp_path / "fer", ["Training", "PublicTest", "Training"], [0, 1, 2])
    fer = root / FER_CSV
    lines = fer.read_text().splitlines()
    k, pixels, u = lines[3].split(",")
    lines[3] = f"{k},{pixels.rsplit(' ', 5)[0]},{u}"
    fer.write_text("\n".join(lines) + "\n")
    with pytest.raises(VafusionError) as exc:
        read_fer(fer, root / FERPLUS_CSV)
    line = _one_line(exc)
    assert str(fer) in line and "line 4" in line and "2299 pixel values, expected 2304" in line


def test_non_numeric_pixels_and_votes(tmp_path: Path) -> None:
    root = write_fer(tmp_path / "fer", ["Training", "PublicTest"], [0, 1])
    fer = root / FER_CSV
    fer.write_text(fer.read_text().replace(",Training", " x,Training", 1))
    with pytest.raises(VafusionError, match="line 2: pixels hold a value that is not an integer"):
        read_fer(fer, root / FERPLUS_CSV)
    root = write_fer(tmp_path / "fer2", ["Training", "PublicTest"], [0, 1])
    plus = root / FERPLUS_CSV
    lines = plus.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ",many"
    plus.write_text("\n".join(lines) + "\n")
    with pytest.raises(VafusionError, match="line 3: a vote count is not a number"):
        read_fer(root / FER_CSV, plus)


def test_row_count_and_order_mismatch(tmp_path: Path) -> None:
    root = write_fer(tmp_path / "fer", ["Training", "PublicTest", "Training"], [0, 1, 2])
    plus = root / FERPLUS_CSV
    plus.write_text("\n".join(plus.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(VafusionError) as exc:
        read_fer(root / FER_CSV, plus)
    line = _one_line(exc)
    assert str(plus) in line and "has 2 rows but fer2013.csv has 3" in line and "unmodified" in line
    root = write_fer(tmp_path / "fer2", ["Training", "PublicTest", "Training"], [0, 1, 2])
    plus = root / FERPLUS_CSV
    lines = plus.read_text().splitlines()
    lines[2], lines[3] = lines[3], lines[2]
    plus.write_text("\n".join(lines) + "\n")
    with pytest.raises(VafusionError, match="line 3: Usage Training but fer2013.csv line 3 says PublicTest"):
        read_fer(root / FER_CSV, plus)


def test_missing_partner_file_and_bad_folders(tmp_path: Path) -> None:
    root = write_fer(tmp_path / "fer", ["Training", "PublicTest"], [0, 1])
    (root / FERPLUS_CSV).unlink()
    with pytest.raises(VafusionError, match="fer2013new.csv: file not found; put fer2013new.csv from"):
        load_face_data(root)
    with pytest.raises(VafusionError, match="data folder not found"):
        load_face_data(tmp_path / "nothing")
    (tmp_path / "imgs" / "train" / "happiness").mkdir(parents=True)
    with pytest.raises(VafusionError, match="soft needs FER\\+ vote counts"):
        load_face_data(tmp_path / "imgs", "soft")
    with pytest.raises(VafusionError, match="train: holds no images"):
        load_face_data(tmp_path / "imgs")


def test_image_folder_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for split, n in (("train", 2), ("val", 1)):
        for k, c in enumerate(("happiness", "sadness")):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                cv2.imwrite(str(tmp_path / split / c / f"{i}.png"), class_face(k, rng, 64))
    sets = load_face_data(tmp_path)
    assert sets["train"].classes == EMOTIONS and len(sets["train"]) == 4 and len(sets["val"]) == 2
    assert sets["train"].counts()["happiness"] == 2 and sets["val"].counts()["sadness"] == 1
    face, target = FaceDataset(sets["train"])[0]
    assert face.shape == (112, 112, 3) and face.dtype == torch.uint8 and target.shape == (8,)


def test_to_face_crop_flip_and_grey_replication() -> None:
    img = np.zeros((48, 48, 3), np.uint8)
    img[:, :24] = 200
    out = to_face(img)
    assert out.shape == (112, 112, 3) and out[:, :50].mean() > 190 and out[:, 62:].mean() < 10
    flipped = to_face(img, flip=True)
    assert flipped[:, :50].mean() < 10 and flipped[:, 62:].mean() > 190
    left = to_face(img, crop=(0.5, 0.0, 0.0))
    assert left.mean() > 190  # the left half is all bright
    torch.manual_seed(0)
    ds = FaceDataset(
        FaceSet(EMOTIONS, np.eye(8, dtype=np.float32)[:1], ["a"], pixels=img[None, :, :, 0]), augment=True
    )
    views = {ds[0][0].numpy().tobytes() for _ in range(6)}
    assert len(views) > 1  # augmentation varies the face


# --- training -----------------------------------------------------------------------------------------------


def test_loss_decreases_and_separable_classes_are_learnt(tmp_path: Path) -> None:
    usage, classes = balanced({"Training": 64, "PublicTest": 16})
    root = write_fer(tmp_path / "fer", usage, classes, seed=3)
    sets = load_face_data(root, "soft")
    torch.manual_seed(0)
    model = FaceClassifier(TinyBackbone(), len(EMOTIONS))
    cfg = FinetuneConfig(epochs=6, batch=16, lr=3e-3, head_lr_scale=1.0, weight_decay=0.0)
    before = accuracy(model, sets["val"])
    model, facts = train_classifier(model, sets["train"], sets["val"], cfg, tmp_path / "work")
    losses = [h["train_loss"] for h in facts["history"]]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]
    assert facts["best_val_acc"] >= 0.9 > before
    assert accuracy(model, sets["val"]) == pytest.approx(facts["best_val_acc"])
    assert (tmp_path / "work" / "last.ckpt").exists()


def test_resume_continues_from_the_last_checkpoint(tmp_path: Path) -> None:
    usage, classes = balanced({"Training": 16, "PublicTest": 8})
    sets = load_face_data(write_fer(tmp_path / "fer", usage, classes), "majority")
    cfg = FinetuneConfig(epochs=1, batch=8, lr=1e-3)
    torch.manual_seed(0)
    _, first = train_classifier(
        FaceClassifier(TinyBackbone(), 8), sets["train"], sets["val"], cfg, tmp_path / "w"
    )
    cfg.epochs = 2
    _, second = train_classifier(
        FaceClassifier(TinyBackbone(), 8), sets["train"], sets["val"], cfg, tmp_path / "w", resume=True
    )
    assert second["resumed"] and [h["epoch"] for h in second["history"]] == [1, 2]
    assert second["history"][0] == first["history"][0]


def test_cli_writes_a_backbone_that_loads_strictly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    usage = ["Training", "Training", "PublicTest", "PrivateTest"]  # one step of two faces keeps this quick
    root = write_fer(tmp_path / "fer", usage, [0, 1, 2, 3])
    torch.manual_seed(0)
    init = tmp_path / "ms1m" / "backbone.pth"
    init.parent.mkdir()
    start = iresnet("iresnet18").state_dict()
    torch.save({f"module.{k}": v for k, v in start.items()}, init)  # a DataParallel-style prefix is accepted
    out = tmp_path / "fer_r18.pth"
    assert (
        main(
            [
                "finetune-face",
                "--data",
                str(root),
                "--weights",
                str(init),
                "--out",
                str(out),
                "--arch",
                "iresnet18",
                "--epochs",
                "1",
                "--batch",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    printed, err = capsys.readouterr()
    assert "best epoch 1" in printed and "--iresnet-weights" in printed
    unseen = "surprise, sadness, anger, disgust, fear, contempt"  # the two training faces are classes 0, 1
    assert f"vafusion: note: no training faces of {unseen}: the head keeps their outputs" in err
    saved = torch.load(out, map_location="cpu", weights_only=True)
    assert set(saved) == set(start)  # plain arcface_torch keys, no head, no prefix
    net = load_iresnet("iresnet18", out)
    assert not torch.equal(net.state_dict()["conv1.weight"], start["conv1.weight"])  # it was trained
    head = torch.load(output_paths(out)["head"], weights_only=True)
    assert head["weight"].shape == (8, 512) and head["bias"].shape == (8,)
    summary = json.loads(output_paths(out)["summary"].read_text())
    assert summary["classes"] == list(EMOTIONS) and summary["counts"]["train"]["neutral"] == 1
    assert 0.0 <= summary["test_acc"] <= 1.0 and len(summary["history"]) == 1
    with pytest.raises(WeightsError, match="not iresnet34 weights"):
        load_iresnet("iresnet34", out)


def test_cli_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_fer(tmp_path / "fer", ["Training", "PublicTest"], [0, 1])
    (root / FER_CSV).write_text("emotion,pixels\n0,1 2 3\n")
    init = tmp_path / "b.pth"
    assert (
        main(["finetune-face", "--data", str(root), "--weights", str(init), "--out", str(tmp_path / "o.pth")])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fer2013.csv: missing column(s) Usage" in err[0]
    assert (
        main(
            [
                "finetune-face",
                "--data",
                str(write_fer(tmp_path / "ok", ["Training", "PublicTest"], [0, 1])),
                "--weights",
                str(init),
                "--out",
                str(tmp_path / "o.pth"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "b.pth: weights file not found" in err[0] and "arcface_torch" in err[0]


def test_help_explains_every_option() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    p = sub.choices["finetune-face"]
    for action in p._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and len(action.help) > 10, action.dest
    text = p.format_help()
    assert "fer2013new.csv" in text and "--iresnet-weights" in text


# --- reruns: seeding, last.ckpt, Ctrl-C, an existing --out -------------------------------------------------


@pytest.fixture
def tiny_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``finetune-face`` on 16 training faces with the tiny backbone (``load_iresnet`` returns a copy of
    one fixed TinyBackbone without drawing random numbers, so only ``--seed`` can make runs agree)."""
    usage, classes = balanced({"Training": 16, "PublicTest": 8})
    root = write_fer(tmp_path / "fer", usage, classes)
    init = tmp_path / "init.pth"
    init.write_bytes(b"stand-in")
    base = TinyBackbone()
    monkeypatch.setattr("vafusion.train.finetune_face.load_iresnet", lambda arch, w: copy.deepcopy(base))

    def run(out: str, *extra: str) -> int:
        args = ["finetune-face", "--data", str(root), "--weights", str(init), "--out", str(tmp_path / out)]
        flags = ["--arch", "iresnet18", "--batch", "8", "--lr", "1e-3", "--accelerator", "cpu", "--quiet"]
        return main(args + flags + list(extra))

    return run


def _weights(out: Path) -> dict[str, torch.Tensor]:
    head = torch.load(output_paths(out)["head"], weights_only=True)
    return {**torch.load(out, weights_only=True), **{f"head.{k}": v for k, v in head.items()}}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_gives_the_same_weights(tiny_cli, tmp_path: Path) -> None:
    torch.manual_seed(123)  # whatever the global generator holds before the run must not matter
    assert tiny_cli("a/fer.pth", "--epochs", "1", "--seed", "7") == 0
    torch.manual_seed(456)
    assert tiny_cli("b/fer.pth", "--epochs", "1", "--seed", "7") == 0
    assert tiny_cli("c/fer.pth", "--epochs", "1", "--seed", "8") == 0
    a, b, c = (_weights(tmp_path / d / "fer.pth") for d in "abc")
    assert _same(a, b) and not torch.equal(a["head.weight"], c["head.weight"])
    for d in ("a/fer.pth", "a/fer.head.pt"):  # the very same files
        assert (tmp_path / d).read_bytes() == (tmp_path / d.replace("a/", "b/")).read_bytes()
    history = [
        json.loads(output_paths(tmp_path / d / "fer.pth")["summary"].read_text())["history"] for d in "ab"
    ]
    assert history[0] == history[1]


def test_last_checkpoint_is_written_after_every_epoch(tmp_path: Path) -> None:
    usage, classes = balanced({"Training": 16, "PublicTest": 8})
    sets = load_face_data(write_fer(tmp_path / "fer", usage, classes), "majority")
    cfg = FinetuneConfig(epochs=2, batch=8, lr=0.0, head_lr_scale=0.0)  # validation accuracy never improves
    _, facts = train_classifier(
        FaceClassifier(TinyBackbone(), 8), sets["train"], sets["val"], cfg, tmp_path / "w"
    )
    last = torch.load(tmp_path / "w" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 1 and last["global_step"] == 4 and facts["best_epoch"] == 1
    _, again = train_classifier(
        FaceClassifier(TinyBackbone(), 8), sets["train"], sets["val"], cfg, tmp_path / "w", resume=True
    )
    assert again["resumed"] and again["history"] == facts["history"]  # nothing trained again


def test_ctrl_c_says_how_to_resume_and_resume_ends_as_the_uninterrupted_run(
    tiny_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    assert tiny_cli("ref/fer.pth", "--epochs", "3") == 0
    real = FaceTask.training_step

    def step(self: FaceTask, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.current_epoch == 1 and batch_idx == 1:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, in the second epoch
        return real(self, batch, batch_idx)

    monkeypatch.setattr(FaceTask, "training_step", step)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background test run ignores it
    try:
        capsys.readouterr()
        assert tiny_cli("run/fer.pth", "--epochs", "3") == 130
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Lightning's SIG_IGN undone
    finally:
        signal.signal(signal.SIGINT, before)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "vafusion: interrupted; rerun the same command with --resume to continue (finished work is kept)"
    ]
    work = output_paths(tmp_path / "run" / "fer.pth")["work"]
    assert torch.load(work / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] == 0
    assert tiny_cli("run/fer.pth", "--epochs", "3") == 2  # without --resume: refused, naming the checkpoint
    assert "last.ckpt: already exists" in capsys.readouterr().err
    monkeypatch.setattr(FaceTask, "training_step", real)
    assert tiny_cli("run/fer.pth", "--epochs", "3", "--resume") == 0
    ref, run = (
        json.loads(output_paths(tmp_path / d / "fer.pth")["summary"].read_text()) for d in ("ref", "run")
    )
    assert run["resumed"] and run["history"] == ref["history"]
    assert _same(_weights(tmp_path / "run" / "fer.pth"), _weights(tmp_path / "ref" / "fer.pth"))


def test_existing_out_is_refused_and_a_finished_run_is_kept(
    tiny_cli, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert tiny_cli("ft/fer.pth", "--epochs", "1") == 0
    paths = output_paths(tmp_path / "ft" / "fer.pth")
    files = [paths["backbone"], paths["head"], paths["summary"], paths["work"] / "last.ckpt"]
    state = [(p.read_bytes(), p.stat().st_mtime_ns) for p in files]
    capsys.readouterr()
    assert tiny_cli("ft/fer.pth", "--epochs", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{paths['backbone']}: already exists" in err[0]
    assert "pass --resume to continue that run, or choose another --out" in err[0]
    assert tiny_cli("ft/fer.pth", "--epochs", "1", "--resume") == 0
    captured = capsys.readouterr()
    assert (
        "finished run with these settings; nothing to do" in captured.err and "best epoch 1" in captured.out
    )
    assert [(p.read_bytes(), p.stat().st_mtime_ns) for p in files] == state
