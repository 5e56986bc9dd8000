"""`visionjobs models fetch` / `models check`: the plan with sizes first, exact patterns, --dry-run,
--from, the key-layout check before converting, and clear errors offline (no stack trace)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from models.fetch import MANIFEST, models_of
from service.kinds import KINDS
from tests.hub_repos import CC_CONVERT_CONFIG, controlcolor_repos
from tests.hubserver import HubServer
from visionjobs.cli import main


def test_every_model_a_kind_loads_has_downloads_and_every_download_has_patterns():
    used = models_of(list(KINDS))
    assert set(used) == set(MANIFEST), "a kind's model without downloads, or downloads no kind uses"
    for model, items in MANIFEST.items():
        for d in items:
            assert d.patterns and not any(p in ("*", "**") for p in d.patterns), (model, d.repo_id)


def test_fetch_offline_names_every_missing_item(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VISIONJOBS_MODEL_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "visionjobs.cli", "models", "fetch", "--kind", "colorize"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0
    assert "UPstud/ColorCtrl" in done.stderr and "openai/clip-vit-large-patch14" in done.stderr
    assert "Traceback" not in done.stderr


def test_fetch_refuses_unknown_kinds(tmp_path):
    done = subprocess.run([sys.executable, "-m", "visionjobs.cli", "models", "fetch", "--kind", "nope",
                           "--model-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "unknown kind" in done.stderr


def _fake_timm(root, arch, files):
    repo = root / arch
    repo.mkdir(parents=True)
    for name, size in files.items():
        (repo / name).write_bytes(b"x" * size)
    return {f"timm/{arch}.tv_in1k": repo}


@pytest.fixture
def fetch(tmp_path, monkeypatch):
    def run(hub, *args):
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        return CliRunner().invoke(main, ["models", "fetch", "--model-dir", str(tmp_path / "models"), *args])

    return run


def test_dry_run_prints_files_and_sizes_and_downloads_nothing(tmp_path, fetch):
    repos = {**_fake_timm(tmp_path, "wide_resnet50_2", {"model.safetensors": 250_000, "pytorch_model.bin": 250_000}),
             **_fake_timm(tmp_path, "resnet18", {"model.safetensors": 40_000, "config.json": 10})}
    with HubServer(repos) as hub:
        done = fetch(hub, "--kind", "anomaly", "--dry-run")
        assert done.exit_code == 0, done.output
        assert "250.00 KB  model.safetensors" in done.output and "40.00 KB  model.safetensors" in done.output
        assert "total 290.00 KB in 2 files" in done.output  # the .bin is not part of the plan
        assert hub.downloaded("timm/wide_resnet50_2.tv_in1k") == set()
        assert not (tmp_path / "models").exists()


def test_a_pattern_that_matches_nothing_fails_before_any_download(tmp_path, fetch):
    repos = {**_fake_timm(tmp_path, "wide_resnet50_2", {"pytorch_model.bin": 1000}),
             **_fake_timm(tmp_path, "resnet18", {"model.safetensors": 1000})}
    with HubServer(repos) as hub:
        done = fetch(hub, "--kind", "anomaly")
        assert done.exit_code != 0
        assert "timm/wide_resnet50_2.tv_in1k" in done.output and "nothing matches model.safetensors" in done.output
        assert hub.downloaded("timm/resnet18.tv_in1k") == set()


def test_anomaly_weights_land_where_the_loader_reads(tmp_path, fetch):
    repos = {**_fake_timm(tmp_path, "wide_resnet50_2", {"model.safetensors": 300}),
             **_fake_timm(tmp_path, "resnet18", {"model.safetensors": 200})}
    with HubServer(repos) as hub:
        assert fetch(hub, "--kind", "anomaly").exit_code == 0
    from models.anomaly.loader import weights_file

    assert weights_file("wide_resnet50_2", tmp_path / "models").stat().st_size == 300
    assert weights_file("resnet18", tmp_path / "models").name == "resnet18.safetensors"


@pytest.fixture(scope="module")
def cc_repos(tmp_path_factory):
    return controlcolor_repos(tmp_path_factory.mktemp("cc"))


def test_fetch_from_a_folder_converts_without_the_mirror(tmp_path, fetch, cc_repos):
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(CC_CONVERT_CONFIG))
    served = {k: v for k, v in cc_repos.items() if k != "UPstud/ColorCtrl"}  # no mirror: files from --from
    with HubServer(served) as hub:
        done = fetch(hub, "--kind", "colorize", "--from", str(cc_repos["UPstud/ColorCtrl"]),
                     "--controlcolor-config", str(config))
        assert done.exit_code == 0, done.output
    from models.profiles import missing_weights

    models = tmp_path / "models"
    assert missing_weights("colorize", models) == []
    record = json.loads((models / "controlcolor" / "fetched.json").read_text())
    assert record["source"] == str(cc_repos["UPstud/ColorCtrl"]) and not record["third_party_mirror"]
    assert (models / "controlcolor" / "deformable_vae" / "config.json").is_file()


def test_a_mirror_serving_another_layout_is_refused_before_converting(tmp_path, fetch, cc_repos):
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    torch.save({"state_dict": {"model.diffusion_model.conv.weight": torch.zeros(2, 2), "other.weight": torch.zeros(1)}},
               wrong / "main_model.ckpt")
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(CC_CONVERT_CONFIG))  # (the key check builds the target models: tiny ones here)
    with HubServer({**cc_repos, "UPstud/ColorCtrl": wrong}) as hub:
        done = fetch(hub, "--kind", "colorize", "--controlcolor-config", str(config))
    assert done.exit_code != 0
    assert "not a Control Color checkpoint in the official layout" in done.output and "other.weight" in done.output
    assert not (tmp_path / "models" / "controlcolor" / "unet").exists()


def test_check_names_missing_files_and_the_profile_auto_picks(tmp_path):
    done = CliRunner().invoke(main, ["models", "check", "--model-dir", str(tmp_path), "--kind", "anomaly",
                                     "--kind", "video.generate"])
    assert done.exit_code == 1
    assert "anomaly.fit     MISSING  auto -> tiny" in done.output
    assert "missing: anomaly/wide_resnet50_2.safetensors" in done.output
    assert "missing: cogvideox-2b/transformer/config.json" in done.output
    assert "optional cscv: missing clip-vit-base-patch32/config.json" in done.output
    (tmp_path / "anomaly").mkdir()
    (tmp_path / "anomaly" / "wide_resnet50_2.pth").write_bytes(b"x")
    done = CliRunner().invoke(main, ["models", "check", "--model-dir", str(tmp_path), "--kind", "anomaly", "--json"])
    assert done.exit_code == 0
    rows = json.loads(done.output)["kinds"]
    assert [r["auto"] for r in rows] == ["pretrained", "pretrained"]
    assert rows[0]["features"]["backbone:resnet18"] == ["anomaly/resnet18.safetensors"]
