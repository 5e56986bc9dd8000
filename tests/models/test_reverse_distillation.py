"""Reverse Distillation (models/anomaly/reverse_distillation): student shapes mirror the teacher,
loss and anomaly map against reference formulas, a frozen teacher, defects found after a short
tiny training run, early stopping on the best epoch, cancellation within one step, exact
resumption from a checkpoint, and the artifact. Tiny profile, 64-px inputs: seconds."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("skimage")

from PIL import Image  # noqa: E402

from models.anomaly.backbone import ResNet, build_backbone  # noqa: E402
from models.anomaly.folder import folder_splits  # noqa: E402
from models.anomaly.reverse_distillation import (  # noqa: E402
    LAYERS,
    CheckpointError,
    ReverseDistillationConfig,
    ReverseDistillationNet,
    TrainingCanceled,
    anomaly_map,
    distillation_loss,
    load_artifact,
    read_artifact_meta,
    read_checkpoint,
    save_artifact,
    train_reverse_distillation,
    update_thresholds,
)
from models.anomaly.reverse_distillation import artifact as rd_art  # noqa: E402
from models.anomaly.reverse_distillation.components import build_student  # noqa: E402

try:  # tests/models as a package
    from .anomaly_data import make_benchmark, paste_defect
except ImportError:  # rootdir-less collection
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from anomaly_data import make_benchmark, paste_defect

CFG = dict(backbone="tiny", image_size=64, batch_size=4, seed=0)


def _splits(n_train: int, seed: int = 0, n_test_normal: int = 0, per_defect: int = 2):
    """normal/ = training crops; abnormal/ (with masks) = defective crops; normal test crops
    only when ``n_test_normal`` (else anomalib's split moves 20 % of the training crops)."""
    b = make_benchmark("brick", crop=128, n_train=n_train, n_validation=0, n_test_normal=n_test_normal,
                       n_test_per_defect=per_defect, seed=seed)
    abnormal = [s for s in b.test if s.defect]
    return folder_splits(b.train, [s.image for s in abnormal], abnormal_masks=[s.mask for s in abnormal],
                         normal_test=[s.image for s in b.test if not s.defect], seed=seed)


# ------------------------------------------------------------------------- architecture


@pytest.mark.parametrize("arch,size", [("tiny", 64), ("tiny", 96), ("resnet18", 64), ("wide_resnet50_2", 256)])
def test_student_maps_mirror_the_teacher_per_scale(arch, size):
    # WRN50: shapes only on the meta device (no memory for the 69M + 56M-parameter pair)
    with torch.device("meta" if arch == "wide_resnet50_2" else "cpu"), torch.no_grad():
        teacher = ResNet(arch)
        bottleneck, decoder = build_student(teacher)
        feats = list(teacher.extract(torch.rand(2, 3, size, size), LAYERS).values())
        embedding = bottleneck(feats)
        student = decoder(embedding)
    assert [tuple(s.shape) for s in student] == [tuple(t.shape) for t in feats]
    c1 = teacher.layer_channels["layer1"]
    assert [t.shape[1] for t in feats] == [c1, 2 * c1, 4 * c1]
    assert tuple(embedding.shape) == (2, 8 * c1, size // 32, size // 32)  # one layer4-like map
    if arch == "wide_resnet50_2":
        assert c1 == 256 and embedding.shape[1] == 2048
        assert decoder.layer1[0].conv2.__class__.__name__ == "ConvTranspose2d"  # de-ResNet: upsampling convs
        assert [len(decoder.layer1), len(decoder.layer2), len(decoder.layer3)] == [3, 4, 6]


def test_seeded_student_and_real_forward():
    teacher = build_backbone("tiny", seed=0)
    a, b = ReverseDistillationNet(teacher, ReverseDistillationConfig(**CFG)), \
        ReverseDistillationNet(teacher, ReverseDistillationConfig(**CFG))
    sa, sb = a.student_state_dict(), b.student_state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(k.startswith("decoder.layer1.0.upsample.0") for k in sa) and "bottleneck.bn_layer.0.conv1.weight" in sa
    t, s = a(torch.rand(2, 3, 64, 64))
    assert [x.shape for x in t] == [x.shape for x in s]
    with pytest.raises(ValueError, match="multiple of 32"):
        ReverseDistillationConfig(**{**CFG, "image_size": 100}).validate()


# --------------------------------------------------------------------- loss and map


def _maps(seed: int):
    g = torch.Generator().manual_seed(seed)
    shapes = [(2, 5, 4, 4), (2, 6, 3, 3), (2, 7, 2, 2)]
    return ([torch.randn(s, generator=g) for s in shapes], [torch.randn(s, generator=g) for s in shapes])


def _cos_np(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
    return (a * b).sum(axis) / np.maximum(np.linalg.norm(a, axis=axis) * np.linalg.norm(b, axis=axis), 1e-8)


def test_loss_equals_reference_on_small_tensors():
    teacher, student = _maps(0)
    per_scale = []
    for t, s in zip(teacher, student):
        t, s = t.double().numpy(), s.double().numpy()
        b, _, h, w = t.shape
        per_scale.append(np.mean([1 - _cos_np(t[i, :, y, x], s[i, :, y, x], 0)
                                  for i in range(b) for y in range(h) for x in range(w)]))
    got = distillation_loss(teacher, student)
    assert got.item() == pytest.approx(np.mean(per_scale), rel=1e-6)  # mean over scales of per-location 1 - cos
    flat = sum(np.mean([1 - _cos_np(t[i].double().numpy().ravel(), s[i].double().numpy().ravel(), 0)
                        for i in range(t.shape[0])]) for t, s in zip(teacher, student))
    assert distillation_loss(teacher, student, mode="flattened").item() == pytest.approx(flat, rel=1e-6)
    assert distillation_loss(teacher, [t.clone() for t in teacher]).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(teacher, [2.5 * t for t in teacher]).item() == pytest.approx(0.0, abs=1e-6)


def _upsample_align_corners(m: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize with align_corners=True, written out."""
    h, w = m.shape
    ys, xs = np.linspace(0, h - 1, size), np.linspace(0, w - 1, size)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = m[y0][:, x0] * (1 - fx) + m[y0][:, x1] * fx
    bottom = m[y1][:, x0] * (1 - fx) + m[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def test_anomaly_map_adds_upsampled_cosine_distances_then_blurs():
    from models.anomaly.common import gaussian_blur

    teacher, student = _maps(1)
    size = 16
    ref_add, ref_mul = np.zeros((2, size, size)), np.ones((2, size, size))
    for t, s in zip(teacher, student):
        d = 1 - _cos_np(t.double().numpy(), s.double().numpy(), 1)  # (B, h, w)
        up = np.stack([_upsample_align_corners(d[i], size) for i in range(2)])
        ref_add, ref_mul = ref_add + up, ref_mul * up
    add = anomaly_map(teacher, student, (size, size), "add", sigma=0.0)
    np.testing.assert_allclose(add.numpy(), ref_add, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(anomaly_map(teacher, student, (size, size), "multiply", 0.0).numpy(), ref_mul,
                               rtol=1e-5, atol=1e-6)
    blurred = anomaly_map(teacher, student, (size, size), "add", sigma=4.0)
    assert torch.allclose(blurred, gaussian_blur(add[:, None], 4.0)[:, 0], atol=1e-6)


# ------------------------------------------------------------------- trained (tiny)


@pytest.fixture(scope="module")
def trained():
    splits = _splits(12, n_test_normal=6)  # validation and test: 3 normal + 4 defective crops each
    teacher = build_backbone("tiny", seed=0)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    checkpoints = []
    result = train_reverse_distillation(splits, ReverseDistillationConfig(**CFG, max_epochs=20, patience=2),
                                        backbone=teacher, device="cpu",
                                        on_checkpoint=lambda data, epoch: checkpoints.append((epoch, data)))
    return splits, teacher, before, result, checkpoints


def test_teacher_weights_never_change_during_training(trained):
    _, teacher, before, result, _ = trained
    after = teacher.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [], changed  # weights and BatchNorm running statistics alike
    assert not teacher.training and all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert result.model.net.teacher is teacher
    # ... while the student did train
    assert result.history[-1].train_loss < result.history[0].train_loss


def test_pasted_defect_raises_the_map_above_the_same_training_image():
    splits = _splits(12, per_defect=0)  # normal images only: the monitor is the validation loss
    result = train_reverse_distillation(splits, ReverseDistillationConfig(**CFG, max_epochs=10, patience=0),
                                        device="cpu")
    assert result.history[-1].monitor == "val_loss" and result.best_epoch == 10  # still improving
    box = (40, 50, 40, 40)
    clean = splits.train[:4]  # images equal to training data
    pasted = [paste_defect(im, box, seed=k) for k, im in enumerate(clean)]
    items = result.model.score(clean + [im for im, _ in pasted])
    # the tiny random teacher's margins depend on the CPU's float kernels (AVX2: 1.08-2.1 over these
    # four, baseline kernels: 1.14-2.5): every map higher where the defect is, clearly so on average
    ratios = [b.anomaly_map[gt].mean() / a.anomaly_map[gt].mean() for a, b, (_, gt) in zip(items[:4], items[4:], pasted)]
    assert min(ratios) > 1.03 and np.mean(ratios) > 1.2, ratios
    peaks_inside, inside, outside = 0, [], []
    for a, b, (_, gt) in zip(items[:4], items[4:], pasted):
        diff = b.anomaly_map - a.anomaly_map
        peaks_inside += bool(gt[np.unravel_index(np.argmax(diff), diff.shape)])  # most raised in the square
        inside.append(diff[gt].mean())
        outside.append(np.abs(diff[~gt]).mean())
    assert peaks_inside >= 3, peaks_inside  # (AVX2: the faintest paste peaks just past its edge)
    assert np.mean(inside) > 2 * np.mean(outside), (inside, outside)  # raised there more than changed elsewhere
    assert np.mean([b.score for b in items[4:]]) > np.mean([a.score for a in items[:4]])


def test_early_stopping_keeps_the_best_epoch(trained):
    _, _, _, result, checkpoints = trained
    h = result.history
    assert result.stopped_early and result.epochs_run == len(h) < 20
    assert [m.improved for m in h[-2:]] == [False, False] and h[-1].early_stop
    values = [m.value for m in h]
    best = 1 + next(i for i, v in enumerate(values) if v == max(values))  # first strict maximum (AUROC)
    assert result.best_epoch == best and h[-1].monitor == "image_auroc"
    assert [e for e, _ in checkpoints] == list(range(1, len(h) + 1))
    best_ckpt = read_checkpoint(checkpoints[best - 1][1])["student"]
    final = result.model.net.student_state_dict()
    assert all(torch.equal(final[k], best_ckpt[k]) for k in final)  # the model is the best checkpoint
    last = read_checkpoint(checkpoints[-1][1])
    assert last["best"]["epoch"] == best and last["stopped_early"]


def test_result_shape_metrics_and_artifact_round_trip(trained):
    splits, _, _, result, _ = trained
    model = result.model
    tm = model.test_metrics
    assert tm["images"] == len(splits.test) and tm["abnormal"] > 0
    assert all(0.0 <= tm[k] <= 1.0 for k in ("image_auroc", "image_f1", "pixel_auroc"))
    images = [s for s in splits.test.images[:4]] + [splits.test.images[0].resize((100, 80))]
    items = model.score(images)
    it = items[-1]
    assert it.anomaly_map.shape == it.normalized_map.shape == it.mask.shape == (80, 100)
    assert json.dumps(it.to_dict()) and set(it.to_dict()) == {"score", "normalized_score", "label", "boxes"}
    files = model.render(images[0], items[0], segmentation=True)
    assert set(files) == {"heat_map.png", "mask.png", "anomaly_map.png", "segmentation.png"}
    assert Image.open(io.BytesIO(files["segmentation.png"])).size == images[0].size

    art = save_artifact(model)
    assert set(art) == {rd_art.CONFIG_FILE, rd_art.STUDENT_FILE}
    meta = read_artifact_meta(art)
    assert meta["test_metrics"] == tm and meta["info"]["split"] == splits.record
    assert meta["info"]["training"]["best_epoch"] == result.best_epoch
    loaded = load_artifact(art, device="cpu")
    for x, y in zip(items, loaded.score(images)):
        assert x.score == y.score and np.array_equal(x.anomaly_map, y.anomaly_map) and x.boxes == y.boxes
    assert loaded.test_metrics == tm
    # thresholds change without retraining: JSON only
    thr = float(np.median([i.score for i in items]))
    relabelled = load_artifact({**art, rd_art.CONFIG_FILE: update_thresholds(art, image=thr)}).score(images)
    assert [i.label for i in relabelled] == [i.score > thr for i in items]
    blob = bytearray(art[rd_art.STUDENT_FILE])
    blob[-3] ^= 0xFF
    with pytest.raises(rd_art.ArtifactError, match="sha256"):
        load_artifact({**art, rd_art.STUDENT_FILE: bytes(blob)})
    with pytest.raises(rd_art.ArtifactError, match="fingerprint"):
        load_artifact(art, backbone=build_backbone("tiny", seed=5))


def test_artifact_rebuilds_a_shared_teacher_of_another_seed():
    splits = _splits(4)
    teacher = build_backbone("tiny", seed=0)  # a worker's warm teacher, shared by trainings of any seed
    result = train_reverse_distillation(splits, ReverseDistillationConfig(**{**CFG, "seed": 3}, max_epochs=1),
                                        backbone=teacher, device="cpu")
    art = save_artifact(result.model)
    assert read_artifact_meta(art)["backbone"]["seed"] == 0
    image = splits.train[0]
    assert load_artifact(art).score([image])[0].score == result.model.score([image])[0].score


# ------------------------------------------------------------- cancel and resume


def test_cancel_stops_within_one_step():
    splits = _splits(8)  # 7 training images: 2 steps per epoch at batch 4
    steps = []
    with pytest.raises(TrainingCanceled) as exc:
        train_reverse_distillation(splits, ReverseDistillationConfig(**CFG, max_epochs=5), device="cpu",
                                   on_step=steps.append, should_cancel=lambda: len(steps) >= 3)
    assert len(steps) == 3 and (exc.value.epoch, exc.value.step) == (2, 2)
    assert [(s.epoch, s.step, s.steps_per_epoch) for s in steps] == [(1, 1, 2), (1, 2, 2), (2, 1, 2)]
    assert all(np.isfinite(s.loss) and s.loss > 0 for s in steps)


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run():
    splits = _splits(8)
    cfg = ReverseDistillationConfig(**CFG, max_epochs=4, patience=3)
    ckpts, steps = [], []
    full = train_reverse_distillation(splits, cfg, device="cpu", on_checkpoint=lambda d, e: ckpts.append(d))
    resumed = train_reverse_distillation(splits, cfg, device="cpu", resume_from=ckpts[1],
                                         on_step=lambda s: steps.append((s.epoch, s.step, s.global_step)))
    assert resumed.resumed_from_epoch == 2 and steps[0] == (3, 1, 5)  # the next epoch, not epoch 1
    a, b = full.model.net.student_state_dict(), resumed.model.net.student_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    strip = lambda hist: [{k: v for k, v in m.to_dict().items() if k != "seconds"} for m in hist]  # noqa: E731
    assert strip(full.history) == strip(resumed.history) and full.best_epoch == resumed.best_epoch
    assert full.model.thresholds == resumed.model.thresholds and full.model.test_metrics == resumed.model.test_metrics
    last = read_checkpoint(ckpts[-1])
    assert last["epoch"] == 4 and last["global_step"] == 8 and set(last["rng"]) == {"shuffle", "torch", "cuda"}

    with pytest.raises(CheckpointError, match="learning_rate"):
        train_reverse_distillation(splits, ReverseDistillationConfig(**{**CFG, "learning_rate": 0.001}),
                                   device="cpu", resume_from=ckpts[1])
    with pytest.raises(CheckpointError, match="other images"):
        train_reverse_distillation(_splits(8, seed=1), cfg, device="cpu", resume_from=ckpts[1])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        train_reverse_distillation(splits, cfg, device="cpu", resume_from=b"garbage")


def test_artifact_json_helpers_import_without_torch():
    import subprocess

    code = ("import sys; from models.anomaly.reverse_distillation.artifact import read_artifact_meta, "
            "update_thresholds; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_checkpoint_size_bound_and_resume_callback():
    from models.anomaly.reverse_distillation import checkpoint_nbytes

    splits = _splits(6)
    teacher = build_backbone("tiny", seed=0)
    cfg = ReverseDistillationConfig(**CFG, max_epochs=3, patience=0)
    ckpts = []
    train_reverse_distillation(splits, cfg, backbone=teacher, device="cpu", on_checkpoint=lambda d, e: ckpts.append(d))
    bound = checkpoint_nbytes(teacher, cfg)
    # an upper bound (this epoch's and the best epoch's weights, Adam's moments), not a wild one
    assert max(len(d) for d in ckpts) <= bound < 1.5 * max(len(d) for d in ckpts)
    with torch.device("meta"):
        wrn = build_backbone("wide_resnet50_2", seed=0)
    assert 8e8 < checkpoint_nbytes(wrn, ReverseDistillationConfig(image_size=256)) < 1e9  # WRN50: up to ~0.9 GB
    seen = []
    resumed = train_reverse_distillation(splits, cfg, backbone=teacher, device="cpu", resume_from=ckpts[1],
                                         on_resume=lambda epoch, history: seen.append((epoch, [h.epoch for h in history])))
    assert seen == [(2, [1, 2])] and resumed.resumed_from_epoch == 2
