"""Static checks of docker-compose.yml and the Dockerfile (no Docker engine needed).

- the compose file validates against the Compose Specification schema that check-jsonschema
  vendors (`vendor.compose-spec`);
- every `visionjobs ...` command in either file parses with the real click CLI;
- every `VISIONJOBS_*` variable is a settings field;
- the Dockerfile has `api` (no torch, no `ml` extra) and `worker` targets, each non-root
  with a healthcheck (that both install from the lock: tests/deploy/test_lock.py).
Each checker is a function returning problems, and negative tests feed it broken input.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SHELL_OPS = {"&&", "||", ";", "|", "&"}


# --- compose schema ---------------------------------------------------------------------
def compose_schema_errors(doc: dict) -> list[str]:
    path = resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(path.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]


# --- commands -----------------------------------------------------------------------------
def argvs_in(value) -> list[list[str]]:
    """Every command line found in an exec-form list or a shell string (scripts inside
    `sh -c` included), split at shell operators."""
    if isinstance(value, str):
        lexer = shlex.shlex(value.replace("$$", "$"), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
    else:
        tokens = [str(t) for t in value]
    found, current = [], []
    for tok in tokens + [";"]:
        if tok in SHELL_OPS:
            if current:
                found.append(current)
            current = []
        else:
            current.append(tok)
    for tok in tokens:  # `sh -c "<script>"`: the script is one token
        if " " in tok and tok not in SHELL_OPS:
            found.extend(argvs_in(tok))
    return found


def visionjobs_argvs(values) -> list[list[str]]:
    return [a[1:] for v in values for a in argvs_in(v) if a and Path(a[0]).name == "visionjobs"]


def cli_error(argv: list[str]) -> str | None:
    """None when `visionjobs <argv>` parses with the real CLI, else why not."""
    import click

    from visionjobs.cli import main

    cmd, ctx, args = main, click.Context(main, info_name="visionjobs"), list(argv)
    while isinstance(cmd, click.Group):
        if not args or args[0].startswith("-"):
            return f"{ctx.command_path!r} needs a subcommand, got {args}"
        name, args = args[0], args[1:]
        sub = cmd.get_command(ctx, name)
        if sub is None:
            return f"{ctx.command_path!r} has no command {name!r} (has {sorted(cmd.list_commands(ctx))})"
        if isinstance(sub, click.Group):
            cmd, ctx = sub, click.Context(sub, info_name=name, parent=ctx)
            continue
        try:
            sub.make_context(name, args, parent=ctx)  # parses options: a wrong flag raises
        except click.ClickException as e:
            return f"visionjobs {' '.join(argv)}: {e.format_message()}"
        return None


# --- settings variables -------------------------------------------------------------------
def known_variables() -> set[str]:
    from service.core.config import Settings
    from worker.config import WorkerSettings

    names = set()
    for cls in (Settings, WorkerSettings):
        prefix = cls.model_config["env_prefix"]
        names |= {prefix + name.upper() for name in cls.model_fields}
    return names


def unknown_variables(text: str) -> set[str]:
    return set(re.findall(r"\bVISIONJOBS_[A-Z0-9_]+", text)) - known_variables()


# --- Dockerfile -----------------------------------------------------------------------------
@dataclass
class Stage:
    name: str
    image: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(text: str) -> dict[str, Stage]:
    lines, buf = [], ""
    for raw in text.splitlines():
        if raw.strip().startswith("#") or not raw.strip():
            continue  # Docker drops comment lines even inside a continuation
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        lines.append(buf + raw)
        buf = ""
    args, stages, current = {}, {}, None
    for line in lines:
        op, _, rest = line.strip().partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "ARG" and current is None:
            name, _, default = rest.partition("=")
            args[name] = default
        elif op == "FROM":
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), ""), rest.split()[0])
            m = re.search(r"\s+AS\s+(\S+)\s*$", rest, re.IGNORECASE)
            current = Stage(m.group(1) if m else str(len(stages)), image)
            stages[current.name] = current
        elif current is not None:
            current.instructions.append((op, rest))
    return stages


def stage_chain(stages: dict[str, Stage], target: str) -> tuple[list[Stage], list[Stage]]:
    """(the target and the stages it is FROM, every stage it depends on incl. COPY --from)."""
    chain, name = [], target
    while name in stages:
        chain.append(stages[name])
        name = stages[name].image
    deps, todo = [], [target]
    while todo:
        stage = stages[todo.pop()]
        if stage in deps:
            continue
        deps.append(stage)
        todo += [stage.image] if stage.image in stages else []
        todo += [m for op, a in stage.instructions if op == "COPY" for m in re.findall(r"--from=(\S+)", a) if m in stages]
    return chain, deps


def exec_or_shell(rest: str):
    return json.loads(rest) if rest.startswith("[") else rest


def dockerfile_problems(text: str) -> list[str]:
    stages, problems = parse_dockerfile(text), []
    for target in ("api", "worker"):
        if target not in stages:
            problems.append(f"no `{target}` target")
            continue
        chain, deps = stage_chain(stages, target)
        own = [(op, a) for s in reversed(chain) for op, a in s.instructions]
        users = [a.split(":")[0] for op, a in own if op == "USER"]
        if not users or users[-1] in {"root", "0"}:
            problems.append(f"{target}: runs as root (no non-root USER)")
        health = [a for op, a in own if op == "HEALTHCHECK"]
        if not health or health[-1].upper() == "NONE":
            problems.append(f"{target}: no HEALTHCHECK")
        if not any(op == "CMD" for op, _ in own):
            problems.append(f"{target}: no CMD")
        runs = " ".join(a for s in deps for op, a in s.instructions if op == "RUN")
        ml = re.search(r"torch|\[[^\]]*\bml\b", runs)
        gpu_image = any(re.search(r"cuda|torch", s.image) for s in chain)
        if target == "api" and (ml or gpu_image):
            problems.append(f"api: installs torch / the ml extra or builds on a CUDA image ({ml and ml.group(0)})")
        if target == "worker" and not ml:
            problems.append("worker: installs neither torch nor the ml extra")
    return problems


def dockerfile_commands(text: str) -> list:
    return [exec_or_shell(re.sub(r"^(--\S+\s+)*CMD\s+", "", a) if op == "HEALTHCHECK" else a)
            for s in parse_dockerfile(text).values() for op, a in s.instructions
            if op in {"CMD", "ENTRYPOINT", "RUN"} or (op == "HEALTHCHECK" and a.upper() != "NONE")]


# --- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def compose_commands(doc: dict) -> list:
    values = []
    for svc in doc["services"].values():
        values += [svc[k] for k in ("entrypoint", "command") if k in svc]
        values += [svc["healthcheck"]["test"]] if "healthcheck" in svc else []
    return values


# --- compose ----------------------------------------------------------------------------------
def test_compose_matches_compose_spec(compose):
    assert compose_schema_errors(compose) == []


def test_schema_check_rejects_broken_compose(compose):
    assert compose_schema_errors({**compose, "servicez": {}})  # unknown top-level key
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["api"]["comand"] = "visionjobs api"  # typo in a service key
    assert compose_schema_errors(broken)


def interpolate(value, env: dict[str, str]):
    """Compose's variable interpolation (${VAR}, ${VAR:-default}, ${VAR:?error}, $$), on a parsed
    document; a missing required variable raises KeyError naming it."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m):
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", sub, value.replace("$$", "\0")).replace("\0", "$")


REQUIRED_ENV = {"VISIONJOBS_API_KEYS": "ops:" + "k" * 24, "VISIONJOBS_SIGNING_SECRET": "s" * 32,
                "VISIONJOBS_S3_SECRET_ACCESS_KEY": "p" * 24, "VISIONJOBS_S3_PUBLIC_ENDPOINT_URL": "http://gpu-host:9000"}


def test_compose_services_and_wiring(compose):
    services = compose["services"]
    assert set(services) >= {"redis", "minio", "minio-init", "api", "worker", "models-fetch"}
    redis_cmd = " ".join(services["redis"]["command"])
    for flag in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert flag in redis_cmd
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    assert services["api"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["api"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert services["models-fetch"]["profiles"] == ["tools"]
    assert services["models-fetch"]["command"] == ["visionjobs", "models", "fetch"]  # every kind, conversion included
    stages = parse_dockerfile(DOCKERFILE.read_text())
    for svc in services.values():
        if "build" in svc:
            assert svc["build"]["target"] in stages
    worker = services["worker"]
    assert "models:/models" in worker["volumes"] and "models:/models" in services["models-fetch"]["volumes"]
    assert worker["environment"]["VISIONJOBS_REDIS_URL"].startswith("redis://redis:")
    assert "--preload" in worker["command"]
    # API and workers must agree on the store, bucket and secrets, or URLs and jobs break.
    api_env, worker_env = services["api"]["environment"], worker["environment"]
    shared = ("VISIONJOBS_REDIS_URL", "VISIONJOBS_S3_BUCKET", "VISIONJOBS_S3_ENDPOINT_URL",
              "VISIONJOBS_S3_PUBLIC_ENDPOINT_URL", "VISIONJOBS_S3_ACCESS_KEY_ID", "VISIONJOBS_S3_SECRET_ACCESS_KEY",
              "VISIONJOBS_SIGNING_SECRET")
    assert all(api_env[k] == worker_env[k] for k in shared)
    # Named volumes used by services are declared.
    used = {v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if not v.startswith((".", "/"))}
    assert used <= set(compose.get("volumes", {}))


@pytest.mark.parametrize("gpus, count_env", [(1, None), (4, None), (4, "2")])
def test_rendered_compose_serves_every_gpu_of_the_host(compose, gpus, count_env, tmp_path, monkeypatch):
    """Rendered as compose would (variables substituted) for a host with `gpus` GPUs: one worker
    service reserving all of them (or WORKER_GPU_COUNT), whose `--gpus all` plans one pinned
    process per device the container sees."""
    from worker import launcher

    env = {**REQUIRED_ENV, **({"WORKER_GPU_COUNT": count_env} if count_env else {})}
    rendered = interpolate(compose, env)
    assert compose_schema_errors(rendered) == []
    workers = {n: s for n, s in rendered["services"].items() if s.get("build", {}).get("target") == "worker"
               and "tools" not in s.get("profiles", [])}
    assert list(workers) == ["worker"]
    (device,) = workers["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    visible = gpus if device["count"] == "all" else min(gpus, int(device["count"]))
    assert visible == (int(count_env) if count_env else gpus)
    dev = tmp_path / "dev"  # what the container gets: one device node per GPU given to it
    dev.mkdir()
    for i in range(visible):
        (dev / f"nvidia{i}").touch()
    monkeypatch.setattr(launcher.shutil, "which", lambda name: None)
    argv = visionjobs_argvs([workers["worker"]["command"]])[0]
    spec = argv[argv.index("--gpus") + 1]
    children = launcher.plan(launcher.expand_gpus(spec, str(dev)), ["colorize"], 1, "--preload" in argv, "h")
    assert [c.env["CUDA_VISIBLE_DEVICES"] for c in children] == [str(i) for i in range(visible)]
    assert all("--preload" in c.cmd for c in children)


def test_rendering_without_the_public_s3_endpoint_fails(compose):
    env = {k: v for k, v in REQUIRED_ENV.items() if k != "VISIONJOBS_S3_PUBLIC_ENDPOINT_URL"}
    with pytest.raises(KeyError, match="VISIONJOBS_S3_PUBLIC_ENDPOINT_URL"):
        interpolate(compose, env)


def _deployment_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deployment with docker compose", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def test_readme_deployment_section_runs_in_order(compose):
    """Every variable compose requires is exported before the first `docker compose`; the weights
    are fetched before `up`; every service and `visionjobs` command named exists."""
    block = _deployment_block()
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]
    exported = []
    steps = []
    for line in lines:
        if line.startswith("export "):
            exported += re.findall(r"\b([A-Z_][A-Z0-9_]*)=", line)
        else:
            steps.append(line)
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    assert required <= set(exported), f"not exported: {required - set(exported)}"
    first_compose = next(i for i, line in enumerate(lines) if line.startswith("docker compose"))
    assert all(lines[i].startswith("export ") for i in range(first_compose))
    fetch = next(i for i, s in enumerate(steps) if "models-fetch" in s)
    up = next(i for i, s in enumerate(steps) if re.search(r"docker compose( --profile \S+)* up\b", s))
    assert fetch < up
    for step in steps:
        if step.startswith("docker compose"):
            m = re.search(r"\brun (?:--rm )?(\S+)", step)
            if m:
                assert m.group(1) in compose["services"], step
    argvs = visionjobs_argvs(steps)
    assert all(cli_error(a) is None for a in argvs), [cli_error(a) for a in argvs]


def test_api_secrets_have_no_defaults(compose):
    env = compose["services"]["api"]["environment"]
    for var in ("VISIONJOBS_API_KEYS", "VISIONJOBS_SIGNING_SECRET", "VISIONJOBS_S3_SECRET_ACCESS_KEY"):
        assert re.fullmatch(r"\$\{%s:\?[^}]+\}" % var, env[var]), f"{var} must be required, not defaulted"


# --- commands -----------------------------------------------------------------------------------
def test_compose_and_dockerfile_commands_exist_in_cli(compose):
    argvs = visionjobs_argvs(compose_commands(compose)) + visionjobs_argvs(dockerfile_commands(DOCKERFILE.read_text()))
    # Guard against a collector that silently finds nothing.
    assert {a[0] if a[0] != "models" else "models fetch" for a in argvs} >= {"api", "worker", "models fetch"}
    errors = [e for a in argvs if (e := cli_error(a))]
    assert errors == []


def test_cli_check_rejects_wrong_commands():
    assert cli_error(["worker", "--gpu", "0"])  # misspelled flag
    assert cli_error(["no-such-command"])
    assert cli_error(["models", "no-such-subcommand"])
    assert cli_error(["worker"]) is None


def test_command_collector_reads_shell_and_exec_forms():
    assert visionjobs_argvs(['sh -c "visionjobs models fetch && visionjobs worker --gpus 0"']) == [
        ["models", "fetch"], ["worker", "--gpus", "0"]]
    assert visionjobs_argvs([["/usr/local/bin/visionjobs", "api", "--port", "8000"]]) == [["api", "--port", "8000"]]


def _healthcheck_code(target: str) -> str:
    (check,) = [a for op, a in parse_dockerfile(DOCKERFILE.read_text())[target].instructions if op == "HEALTHCHECK"]
    argv = exec_or_shell(re.sub(r"^(--\S+\s+)*CMD\s+", "", check))
    assert argv[:2] == ["python", "-c"]
    return argv[2]


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_worker_healthcheck_detects_worker_process():
    """Run the worker HEALTHCHECK here: it must fail with no `-m worker.process` child
    (the module the launcher spawns) and pass with one."""
    code = _healthcheck_code("worker")
    assert '"-m", "worker.process"' in (ROOT / "worker" / "launcher.py").read_text()
    env = {k: v for k, v in os.environ.items() if k != "VISIONJOBS_REDIS_URL"}  # no broker part
    run = lambda: subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30).returncode
    others = any(b"\0worker.process\0" in _cmdline(p) for p in os.listdir("/proc") if p.isdigit())
    if not others:  # a real worker started by another test would make the negative case pass
        assert run() == 1
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "-m", "worker.process"])
    try:
        time.sleep(0.2)
        assert run() == 0
    finally:
        fake.kill()
        fake.wait()


# --- variables -----------------------------------------------------------------------------------
def test_every_visionjobs_variable_is_a_setting():
    for path in (COMPOSE, DOCKERFILE):
        assert unknown_variables(path.read_text()) == set(), path.name


def test_variable_check_rejects_unknown_names():
    assert unknown_variables("environment:\n  VISIONJOBS_REDIS_URL: x\n  VISIONJOBS_NOPE: y\n") == {"VISIONJOBS_NOPE"}
    assert unknown_variables("ENV VISIONJOBS_GPUS=0 VISIONJOBS_MODEL_DIR=/models") == set()


# --- Dockerfile --------------------------------------------------------------------------------------
def test_dockerfile_targets_users_healthchecks():
    text = DOCKERFILE.read_text()
    assert dockerfile_problems(text) == []
    stages = parse_dockerfile(text)
    assert "base" in stages
    api = [(op, a) for op, a in stages["api"].instructions]
    assert ("EXPOSE", "8000") in api
    worker_env = " ".join(a for op, a in stages["worker"].instructions if op == "ENV")
    assert "VISIONJOBS_MODEL_DIR=/models" in worker_env


def test_dockerfile_check_rejects_bad_targets():
    good = DOCKERFILE.read_text()
    leaky = good.replace("RUN pip install -c /tmp/lock.txt /wheels/*.whl",
                         'RUN pip install -c /tmp/lock.txt "$(ls /wheels/*.whl)[ml]"')
    assert leaky != good and any(p.startswith("api:") for p in dockerfile_problems(leaky))
    rootful = re.sub(r"(?m)^USER .*$", "USER root", good)
    assert sum("runs as root" in p for p in dockerfile_problems(rootful)) == 2
    no_health = re.sub(r"(?ms)^HEALTHCHECK .*?(?=^CMD)", "", good)
    assert sum("no HEALTHCHECK" in p for p in dockerfile_problems(no_health)) == 2
    assert "no `worker` target" in dockerfile_problems(good.replace("AS worker", "AS gpu"))
