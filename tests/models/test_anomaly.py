"""PatchCore anomaly model (models/anomaly): backbone layout and strict loading, coreset,
nearest neighbours, reweighting, thresholds/normalisation, maps/boxes/rendering, artifact,
and an end-to-end check on a synthetic texture benchmark with the tiny random backbone."""
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

from models.anomaly import artifact as art  # noqa: E402
from models.anomaly.backbone import (  # noqa: E402
    BackboneWeightsError,
    ResNet,
    build_backbone,
    load_backbone_weights,
    weights_fingerprint,
)
from models.anomaly.patchcore import (  # noqa: E402
    PatchCoreConfig,
    Validation,
    fit_patchcore,
    gaussian_blur,
    jl_min_dim,
    k_center_greedy,
    nearest_neighbors,
    reweighted_image_score,
    select_coreset,
)
from models.anomaly.postprocess import (  # noqa: E402
    NormalizationStats,
    anomaly_map_png16_bytes,
    auroc,
    boxes_from_mask,
    decode_anomaly_map_png16,
    f1_optimal_threshold,
    mask_png_bytes,
    normalize,
    quantile_threshold,
    render_heat_map,
)

try:  # tests/models as a package
    from .anomaly_data import DEFECT_TYPES, make_benchmark, paste_defect
except ImportError:  # rootdir-less / plain-directory collection
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from anomaly_data import DEFECT_TYPES, make_benchmark, paste_defect

torch.set_num_threads(min(2, torch.get_num_threads()))


# ------------------------------------------------------------------ torchvision layout


def torchvision_resnet_shapes(block: str, layers, width_per_group: int = 64) -> dict[str, tuple]:
    """torchvision's resnet state_dict key -> shape, written out independently of the model
    code (torchvision/models/resnet.py: BasicBlock / Bottleneck V1.5, fc 1000)."""
    shapes: dict[str, tuple] = {}

    def bn(prefix, c):
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    expansion = 1 if block == "basic" else 4
    shapes["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    inplanes = 64
    for li, (planes, n) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        stride = 1 if li == 1 else 2
        for bi in range(n):
            p = f"layer{li}.{bi}"
            if block == "basic":
                shapes[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
                bn(f"{p}.bn1", planes)
                shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                bn(f"{p}.bn2", planes)
            else:
                w = int(planes * width_per_group / 64)
                shapes[f"{p}.conv1.weight"] = (w, inplanes, 1, 1)
                bn(f"{p}.bn1", w)
                shapes[f"{p}.conv2.weight"] = (w, w, 3, 3)
                bn(f"{p}.bn2", w)
                shapes[f"{p}.conv3.weight"] = (planes * 4, w, 1, 1)
                bn(f"{p}.bn3", planes * 4)
            if bi == 0 and (stride != 1 or inplanes != planes * expansion):
                shapes[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    shapes["fc.weight"] = (1000, 512 * expansion)
    shapes["fc.bias"] = (1000,)
    return shapes


@pytest.mark.parametrize("arch,block,layers,wpg", [
    ("resnet18", "basic", (2, 2, 2, 2), 64),
    ("wide_resnet50_2", "bottleneck", (3, 4, 6, 3), 128),
])
def test_state_dict_layout_matches_torchvision(arch, block, layers, wpg):
    with torch.device("meta"):  # no memory for the 69M-parameter WRN
        model = ResNet(arch)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == torchvision_resnet_shapes(block, layers, wpg)
    if arch == "wide_resnet50_2":
        assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)
        assert sum(p.numel() for p in model.parameters()) == 68_883_240  # torchvision's count


def _torchvision_state_dict(seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in torchvision_resnet_shapes("basic", (2, 2, 2, 2)).items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.05
    return sd


@pytest.fixture(scope="module")
def tv_state_dict():
    return _torchvision_state_dict()


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "wrapped"])
def test_strict_load_of_torchvision_weight_files(tmp_path, tv_state_dict, fmt):
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "resnet18.safetensors"
        save_file(tv_state_dict, str(path))
    elif fmt == "pth":
        path = tmp_path / "resnet18.pth"
        torch.save(tv_state_dict, path)
    else:  # a training checkpoint: {"state_dict": {"module.<key>": ...}}
        path = tmp_path / "ckpt.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in tv_state_dict.items()}}, path)
    model = build_backbone("resnet18", weights=path)
    sd = model.state_dict()
    for k, v in tv_state_dict.items():
        assert torch.equal(sd[k], v.to(sd[k].dtype)), k
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    feats = model.extract(torch.rand(1, 3, 64, 64))
    assert feats["layer2"].shape == (1, 128, 8, 8) and feats["layer3"].shape == (1, 256, 4, 4)


def test_wrong_shape_missing_and_unexpected_keys_are_named(tv_state_dict):
    bad = dict(tv_state_dict)
    bad["layer3.1.conv2.weight"] = torch.zeros(256, 256, 1, 1)
    with pytest.raises(BackboneWeightsError, match=r"layer3\.1\.conv2\.weight.*\(256, 256, 1, 1\)"):
        load_backbone_weights(ResNet("resnet18"), bad)
    missing = {k: v for k, v in tv_state_dict.items() if k != "layer2.0.downsample.1.running_mean"}
    missing["head.extra"] = torch.zeros(1)
    with pytest.raises(BackboneWeightsError) as exc:
        load_backbone_weights(ResNet("resnet18"), missing)
    assert "layer2.0.downsample.1.running_mean" in str(exc.value) and "head.extra" in str(exc.value)
    # wide_resnet50_2 weights are refused by resnet18 (shapes differ from conv1 on)
    with pytest.raises(BackboneWeightsError, match="wide_resnet50_2"):
        load_backbone_weights(ResNet("wide_resnet50_2", width=8), tv_state_dict)
    # the one tolerance: num_batches_tracked counters may be absent
    no_counters = {k: v for k, v in tv_state_dict.items() if not k.endswith("num_batches_tracked")}
    load_backbone_weights(ResNet("resnet18"), no_counters)


def test_random_backbone_is_seeded_and_kaiming():
    a, b, c = build_backbone("tiny", seed=3), build_backbone("tiny", seed=3), build_backbone("tiny", seed=4)
    assert weights_fingerprint(a) == weights_fingerprint(b) != weights_fingerprint(c)
    w = a.layer3[0].conv2.weight  # fan_out = 64 * 9
    assert abs(w.std().item() - (2.0 / (64 * 9)) ** 0.5) < 0.01
    assert torch.equal(a.bn1.running_var, torch.ones_like(a.bn1.running_var))


# ----------------------------------------------------------- coreset and neighbours


def _covering_radius(x: torch.Tensor, idx: torch.Tensor) -> float:
    d, _ = nearest_neighbors(x, x[idx], k=1, exact=True)
    return float(d.max())


@pytest.mark.parametrize("dim", [32, 512])  # 32: no projection; 512: JL projection (k=193)
def test_coreset_count_and_covering_radius_vs_random(dim):
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(12, dim, generator=g) * 4
    n = 2500
    x = centers[torch.randint(12, (n,), generator=g)] + torch.randn(n, dim, generator=g)
    x[:5] += 30  # a few outliers random sampling tends to miss
    ratio = 0.05
    idx = select_coreset(x, ratio, eps=0.9, seed=0)
    assert idx.numel() == int(n * ratio) == len(set(idx.tolist()))
    greedy = _covering_radius(x, idx)
    randoms = [_covering_radius(x, torch.randperm(n, generator=g)[: idx.numel()]) for _ in range(5)]
    assert greedy <= min(randoms)
    assert (jl_min_dim(n, 0.9) < dim) == (dim == 512)


def test_k_center_greedy_is_farthest_point_and_reports_progress():
    x = torch.tensor([[0.0], [1.0], [10.0], [4.0], [6.0]])
    calls = []
    idx = k_center_greedy(x, 3, seed=0, progress=lambda s, d, t: calls.append((s, d, t)))
    first = idx[0].item()
    d = (x - x[first]).abs()[:, 0]
    assert idx[1].item() == int(d.argmax())  # second centre: farthest from the first
    assert calls[-1] == ("coreset", 3, 3)


def test_chunked_nearest_neighbours_match_brute_force():
    g = torch.Generator().manual_seed(1)
    q, bank = torch.randn(300, 16, generator=g), torch.randn(700, 16, generator=g)
    full = torch.cdist(q, bank, compute_mode="donot_use_mm_for_euclid_dist")
    d1, i1 = nearest_neighbors(q, bank, k=1, max_elems=5000)  # forces query and bank chunks
    assert torch.allclose(d1, full.min(1).values, atol=1e-4) and torch.equal(i1, full.argmin(1))
    dk, ik = nearest_neighbors(q, bank, k=5, max_elems=5000, exact=True)
    ref = full.topk(5, largest=False)
    assert torch.allclose(dk, ref.values, atol=1e-5) and torch.equal(ik, ref.indices)


def test_reweighting_matches_reference():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(60, 8)).astype(np.float32)
    emb = rng.normal(size=(3, 25, 8)).astype(np.float32)
    emb[1, 7] += 3.0  # a clear outlier patch
    tb, te = torch.from_numpy(bank), torch.from_numpy(emb)
    d, loc = nearest_neighbors(te.reshape(-1, 8), tb, k=1, exact=True)
    got = reweighted_image_score(d.view(3, 25), loc.view(3, 25), te, tb, num_neighbors=9)

    ref = []
    for b in range(3):
        dist = np.linalg.norm(emb[b][:, None, :] - bank[None], axis=-1)  # (P, M)
        s = dist.min(1)
        p = int(np.argmax(s))
        m_star = bank[int(np.argmin(dist[p]))]
        support = np.argsort(np.linalg.norm(bank - m_star, axis=1), kind="stable")[:9]  # m* first
        dd = np.linalg.norm(emb[b, p] - bank[support], axis=1)
        w = 1.0 - np.exp(dd[0]) / np.exp(dd).sum()
        ref.append(w * s[p])
    np.testing.assert_allclose(got.numpy(), np.array(ref), rtol=1e-5)
    one = reweighted_image_score(d.view(3, 25), loc.view(3, 25), te, tb, num_neighbors=1)
    np.testing.assert_allclose(one.numpy(), d.view(3, 25).max(1).values.numpy())


def test_gaussian_blur_is_normalised_sigma4():
    impulse = torch.zeros(1, 1, 64, 64)
    impulse[0, 0, 32, 32] = 1.0
    out = gaussian_blur(impulse, 4.0)
    assert out.shape == impulse.shape and abs(out.sum().item() - 1.0) < 1e-5
    ys = torch.arange(64, dtype=torch.float32) - 32
    var = (out[0, 0].sum(1) * ys ** 2).sum().item()
    assert abs(var - 16.0) < 0.3  # sigma^2
    const = torch.full((1, 1, 40, 40), 2.5)
    assert torch.allclose(gaussian_blur(const, 4.0), const)


# ----------------------------------------------------------- thresholds and maps


def test_auroc_and_f1_threshold():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.5, 0.5], [0, 1]) == 0.5
    rng = np.random.default_rng(0)
    s, y = rng.integers(0, 5, 200).astype(float), rng.integers(0, 2, 200)
    pairs = (s[y == 1][:, None] > s[y == 0][None]) + 0.5 * (s[y == 1][:, None] == s[y == 0][None])
    assert abs(auroc(s, y) - pairs.mean()) < 1e-12
    thr, f1 = f1_optimal_threshold([0.1, 0.3, 0.35, 0.7, 0.9], [0, 0, 0, 1, 1])
    assert f1 == 1.0 and 0.35 < thr < 0.7
    assert quantile_threshold(np.arange(101), 0.99) == pytest.approx(99.0)


def test_normalisation_maps_threshold_to_half():
    thr, lo, hi = 3.0, 1.0, 7.0
    assert normalize(thr, thr, lo, hi) == 0.5
    x = np.linspace(-10, 20, 301)
    n = normalize(x, thr, lo, hi)
    assert np.all(np.diff(n) >= 0) and n.min() == 0.0 and n.max() == 1.0
    assert np.array_equal(n > 0.5, x > thr)
    assert normalize(thr, thr, 2.0, 2.0) == 0.5  # degenerate range does not divide by zero


def test_boxes_mask_and_png_encodings():
    mask = np.zeros((50, 60), bool)
    mask[10:20, 5:25] = True  # 200 px
    mask[40:42, 50:52] = True  # 4 px: below min_area
    nmap = np.where(mask, 0.9, 0.1).astype(np.float32)
    boxes = boxes_from_mask(mask, nmap, min_area=16)
    assert [b.xywh for b in boxes] == [(5, 10, 20, 10)] and boxes[0].area == 200
    assert boxes[0].score == pytest.approx(0.9)

    img = Image.fromarray(np.full((50, 60, 3), 128, np.uint8))
    heat = Image.open(io.BytesIO(render_heat_map(img, nmap)))
    assert heat.mode == "RGB" and heat.size == (60, 50)
    px = np.asarray(heat)
    # alpha 0.4 JET over grey 128: a cold (blue-dominant) pixel vs a hot (red-dominant) one
    assert px[0, 0, 2] > px[0, 0, 0] and px[15, 10, 0] > px[15, 10, 2]
    m = Image.open(io.BytesIO(mask_png_bytes(mask)))
    assert m.mode == "L" and set(np.unique(np.asarray(m))) == {0, 255}
    data = anomaly_map_png16_bytes(nmap, stats=NormalizationStats(0, 1, 0, 2))
    png = Image.open(io.BytesIO(data))
    assert png.mode.startswith("I;16") and png.text["visionjobs:pixel_max"] == "2.0"
    np.testing.assert_allclose(decode_anomaly_map_png16(data), nmap, atol=1 / 65535)


# -------------------------------------------------------------- end to end (tiny)

CFG = dict(backbone="tiny", image_size=128, batch_size=8)


@pytest.fixture(scope="module")
def bench():
    return make_benchmark("brick", crop=128, n_train=12, n_validation=16, n_test_normal=6,
                          n_test_per_defect=2, seed=0)


def _validation(bench, masks: bool) -> Validation:
    return Validation(normal=[s.image for s in bench.validation if s.defect is None],
                      abnormal=[s.image for s in bench.validation if s.defect],
                      abnormal_masks=[s.mask for s in bench.validation if s.defect] if masks else None)


@pytest.fixture(scope="module")
def fitted(bench):
    # normal + abnormal validation images without masks: F1 image threshold, quantile pixel one
    return fit_patchcore(bench.train, PatchCoreConfig(**CFG), _validation(bench, masks=False), device="cpu")


def test_fit_uses_validation_thresholds_and_coreset_size(fitted, bench):
    t = fitted.thresholds
    assert (t.image_method, t.pixel_method) == ("f1", "quantile")
    grid = 16  # 128 px / stride 8
    assert fitted.memory_bank.shape == (int(12 * grid * grid * 0.1), 32 + 64)
    assert fitted.info["counts"]["held_out_images"] == 0
    assert fitted.normalize_score(t.image) == 0.5 and fitted.normalize_map(t.pixel) == 0.5
    # the image threshold is F1-optimal on the validation scores
    val = _validation(bench, masks=False)
    scores, _ = fitted.predict_images_raw(list(val.normal) + list(val.abnormal))
    labels = np.r_[np.zeros(len(val.normal)), np.ones(len(val.abnormal))]
    f1 = lambda thr: 2 * ((scores > thr) & (labels == 1)).sum() / ((scores > thr).sum() + labels.sum())  # noqa: E731
    assert all(f1(t.image) >= f1(c) for c in scores)


def test_pixel_threshold_is_f1_optimal_with_masks(bench):
    model = fit_patchcore(bench.train, PatchCoreConfig(**CFG), _validation(bench, masks=True), device="cpu")
    assert model.thresholds.pixel_method == "f1"
    val = _validation(bench, masks=True)
    _, maps = model.predict_images_raw(list(val.normal) + list(val.abnormal))
    gt = np.concatenate([np.zeros((len(val.normal), 128, 128), bool), np.stack(val.abnormal_masks)])

    def f1(thr):
        pred = maps > thr
        return 2 * (pred & gt).sum() / (pred.sum() + gt.sum())

    best = f1(model.thresholds.pixel)
    assert best > 0.3
    assert all(best >= f1(c) - 1e-9 for c in np.quantile(maps, np.linspace(0.5, 0.999, 40)))


def test_normal_below_and_pasted_defect_above_with_overlapping_box(fitted, bench):
    normals = [s.image for s in bench.test if s.defect is None]
    box = (44, 60, 30, 30)
    defective, gt = paste_defect(normals[0], box, seed=0)
    items = fitted.score(normals + [defective], batch_size=4)
    for it in items[:-1]:
        assert it.score < fitted.thresholds.image and not it.label and it.normalized_score < 0.5
    bad = items[-1]
    assert bad.score > fitted.thresholds.image and bad.label and bad.normalized_score > 0.5
    assert bad.anomaly_map.shape == bad.mask.shape == (128, 128)
    assert bad.boxes, "no box on the pasted defect"
    x, y, w, h = bad.boxes[0].xywh  # the largest component
    inter = max(0, min(x + w, box[0] + box[2]) - max(x, box[0])) * max(0, min(y + h, box[1] + box[3]) - max(y, box[1]))
    assert inter >= 0.5 * box[2] * box[3]  # the box covers most of the pasted square
    assert x <= box[0] + box[2] // 2 <= x + w and y <= box[1] + box[3] // 2 <= y + h
    assert bad.mask[gt].mean() > 0.5  # most defect pixels are in the mask
    assert bad.boxes[0].score > 0.5
    assert json.dumps(bad.to_dict())  # JSON-friendly summary
    files = fitted.render(defective, bad)
    assert Image.open(io.BytesIO(files["heat_map.png"])).size == defective.size
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(files["mask.png"]))) > 0, bad.mask)
    np.testing.assert_allclose(decode_anomaly_map_png16(files["anomaly_map.png"]), bad.normalized_map,
                               atol=0.5 / 65535 + 1e-7)


def test_image_and_pixel_auroc_on_test_set(fitted, bench):
    items = fitted.score([s.image for s in bench.test])
    labels = [s.label for s in bench.test]
    assert auroc([it.score for it in items], labels) >= 0.9
    pix = auroc(np.concatenate([it.anomaly_map.ravel() for it in items]),
                np.concatenate([s.mask.ravel() for s in bench.test]))
    assert pix >= 0.9
    assert {s.defect for s in bench.test} == {None, *DEFECT_TYPES}


def test_scores_follow_original_image_size(fitted, bench):
    img = bench.test[0].image.resize((200, 150))
    item = fitted.score([img])[0]
    assert item.anomaly_map.shape == item.normalized_map.shape == item.mask.shape == (150, 200)


def test_artifact_round_trip_and_threshold_update(fitted, bench):
    images = [s.image for s in bench.test[:5]]
    files = art.save_artifact(fitted)
    assert set(files) == {art.CONFIG_FILE, art.MEMORY_BANK_FILE}
    loaded = art.load_artifact(files, device="cpu")
    before, after = fitted.score(images), loaded.score(images)
    for a, b in zip(before, after):
        assert a.score == b.score and a.normalized_score == b.normalized_score
        assert np.array_equal(a.anomaly_map, b.anomaly_map) and a.boxes == b.boxes

    # change the threshold without refitting: JSON only, bank bytes unchanged
    new_thr = float(np.median([it.score for it in before]))
    files2 = {**files, art.CONFIG_FILE: art.update_thresholds(files, image=new_thr)}
    meta = art.read_artifact_meta(files2)
    assert meta["thresholds"]["image"] == new_thr and meta["thresholds"]["image_method"] == "manual"
    relabelled = art.load_artifact(files2).score(images)
    assert [it.label for it in relabelled] == [it.score > new_thr for it in before]

    bank = bytearray(files[art.MEMORY_BANK_FILE])
    bank[-3] ^= 0xFF  # flip one byte of the last float
    with pytest.raises(art.ArtifactError, match="sha256"):
        art.load_artifact({**files, art.MEMORY_BANK_FILE: bytes(bank)})
    with pytest.raises(art.ArtifactError, match="fingerprint"):
        art.load_artifact(files, backbone=build_backbone("tiny", seed=99))


def test_fit_without_validation_holds_out_normals(bench):
    calls = []
    model = fit_patchcore(bench.train[:6], PatchCoreConfig(**CFG), device="cpu",
                          progress=lambda s, d, t: calls.append(s))
    assert model.info["counts"]["held_out_images"] == 1 and model.info["counts"]["train_images"] == 5
    assert model.thresholds.image_method == "quantile" and model.thresholds.quantile == 0.99
    assert {"embedding", "coreset", "calibration"} <= set(calls)


def test_progress_exception_cancels_and_bad_inputs(bench):
    class Cancelled(Exception):
        pass

    def cancel(stage, done, total):
        if stage == "coreset":
            raise Cancelled

    with pytest.raises(Cancelled):
        fit_patchcore(bench.train[:3], PatchCoreConfig(**CFG), device="cpu", progress=cancel)
    with pytest.raises(ValueError, match="empty training set"):
        fit_patchcore([], PatchCoreConfig(**CFG), device="cpu")
    with pytest.raises(ValueError, match="backbone"):
        PatchCoreConfig(backbone="vgg16").validate()
