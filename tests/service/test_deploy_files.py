"""docker-compose.yml and the Dockerfile, checked by parsing (Docker cannot run here)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def _stages() -> dict[str, list[str]]:
    """Dockerfile instructions per stage (continuation lines joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if m:
            current = m.group(2) or m.group(1)
            stages[current] = [line]
        elif current is not None:
            stages[current].append(line)
    return stages


GPU_WORKERS = ("worker-gpu-0", "worker-gpu-1")
# Read by huggingface_hub in the workers and by the API's check of hub ids (service/targets.py).
HF_VARS = {"HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE"}


def test_compose_has_the_services_in_order() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"api", "worker", "beat", "postgres", "redis", "migrate", *GPU_WORKERS}
    assert services["beat"]["command"][:4] == ["celery", "-A", "worker.celery_app", "beat"]
    for name in ("api", "worker", "beat", *GPU_WORKERS):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["command"] == ["python", "-m", "service.admin", "migrate"]
    assert services["api"]["build"]["target"] == "api"
    assert services["worker"]["build"]["target"] == "worker"
    # Both sides see the same artifacts, data, models and hub cache at the same paths.
    for name in ("worker", *GPU_WORKERS):
        assert services["api"]["volumes"] == services[name]["volumes"]
    assert services["api"]["environment"]["HF_HOME"].startswith("/var/lib/iprox/")
    assert "artifacts:/var/lib/iprox" in services["api"]["volumes"]


def test_compose_gpu_profile_runs_one_pinned_worker_per_gpu() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert "profiles" not in services["worker"]  # the CPU worker stays the default
    pinned = []
    for name in GPU_WORKERS:
        svc = services[name]
        assert svc["profiles"] == ["gpu"]
        assert svc["build"]["target"] == "worker-gpu"
        command = svc["command"]
        assert command[command.index("--concurrency") + 1] == "1"
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert len(device["device_ids"]) == 1
        pinned.append(device["device_ids"][0])
        # The container sees only its reserved GPU, as device 0.
        assert svc["environment"]["IPROX_DEVICE"] == "cuda:0"
        settings = Settings(
            **{
                k.removeprefix("IPROX_").lower(): v
                for k, v in svc["environment"].items()
                if k.startswith("IPROX_")
            }
        )
        assert settings.device == "cuda:0"
    assert sorted(pinned) == [str(i) for i in range(len(GPU_WORKERS))]  # one GPU each


def test_compose_environment_names_real_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    known = {f"IPROX_{name.upper()}" for name in Settings.model_fields}
    for name in ("api", "worker", "beat", "migrate", *GPU_WORKERS):
        env = compose["services"][name]["environment"]
        assert set(env) <= known | HF_VARS, set(env) - known - HF_VARS
        own = {k: v for k, v in env.items() if k.startswith("IPROX_")}
        settings = Settings(**{k.removeprefix("IPROX_").lower(): v for k, v in own.items()})
        assert settings.resolved_database_url.startswith("postgresql+psycopg://")
        assert settings.resolved_broker_url.startswith("redis://")


def test_api_image_carries_no_torch() -> None:
    stages = _stages()
    assert {"base", "api", "worker"} <= set(stages)
    api = " ".join(stages["base"] + stages["api"]).lower()
    assert "torch" not in api and "[engine]" not in api
    worker = " ".join(stages["worker"])
    assert "torch==2.13.0" in worker and "download.pytorch.org/whl/cpu" in worker
    assert '".[engine]"' in worker


def test_gpu_image_installs_a_cuda_build_of_torch() -> None:
    stages = _stages()
    assert stages["worker-gpu"][0].startswith("FROM base AS worker-gpu")
    gpu = " ".join(stages["worker-gpu"])
    cuda = re.search(r"ARG TORCH_CUDA=(cu\d+)", gpu)
    assert cuda is not None and "download.pytorch.org/whl/${TORCH_CUDA}" in gpu
    assert "/whl/cpu" not in gpu and '".[engine]"' in gpu
    assert "IPROX_DEVICE=cuda:0" in gpu and '"--concurrency", "1"' in gpu


def test_dockerfile_copies_what_exists() -> None:
    for line in _stages()["base"]:
        if line.upper().startswith("COPY"):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "tests" in ignored


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration") : readme.index("## Command line")]
    missing = [n for n in Settings.model_fields if f"`IPROX_{n.upper()}`" not in table]
    assert missing == []
