"""helm/Dockerfile cannot be built here (no container engine); check its
structure instead, and scan it with checkov's Dockerfile checks."""

import json
import re

from conftest import HELM, REPO, run, tool

DOCKERFILE = HELM / "Dockerfile"


def instructions():
    """(INSTRUCTION, arguments) with continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_multi_stage_from_pinned_images():
    froms = [a for i, a in instructions() if i == "FROM"]
    assert froms == ["rust:1.95-bookworm AS build", "debian:bookworm-slim"]


def test_builds_the_one_binary_with_protoc():
    runs = " ".join(a for i, a in instructions() if i == "RUN")
    assert "cargo build --release --locked -p ringmesh" in runs
    assert "protobuf-compiler" in runs and "libprotobuf-dev" in runs
    assert (REPO / "Cargo.lock").exists(), "--locked needs the committed Cargo.lock"


def test_runtime_is_non_root_and_minimal():
    ins = instructions()
    last_from = max(n for n, (i, _) in enumerate(ins) if i == "FROM")
    runtime = ins[last_from:]
    users = [a for i, a in runtime if i == "USER"]
    assert users == ["10001:10001"]
    assert ("ENTRYPOINT", '["ringmesh"]') in runtime
    assert any(i == "COPY" and a.startswith("--from=build ") for i, a in runtime)
    exposed = " ".join(a for i, a in runtime if i == "EXPOSE").split()
    assert {"5060/udp", "5060/tcp", "5160/udp", "5360/tcp", "5660/tcp", "5661/tcp"} <= set(exposed)
    for i, a in runtime:
        if i == "RUN" and "apt-get install" in a:
            assert "--no-install-recommends" in a and "rm -rf /var/lib/apt/lists/*" in a


def test_no_add_and_no_download():
    for i, a in instructions():
        assert i != "ADD", "COPY, never ADD (ADD fetches URLs and unpacks archives)"
        assert not re.search(r"\b(curl|wget)\b", a), f"no download in the image build: {a}"


def test_context_ignore_file():
    ignore = (HELM / "Dockerfile.dockerignore").read_text().split()
    assert "target/" in ignore and ".git/" in ignore


def test_checkov_dockerfile():
    r = run([tool("checkov"), "-f", str(DOCKERFILE), "--framework", "dockerfile", "--skip-download",
             "--quiet", "--compact", "--output", "json"], timeout=300)
    rep = json.loads(r.stdout)
    reps = rep if isinstance(rep, list) else [rep]
    failed = [c["check_id"] for x in reps for c in x.get("results", {}).get("failed_checks", [])]
    assert not failed, failed
