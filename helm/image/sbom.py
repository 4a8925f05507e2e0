#!/usr/bin/env python3
"""An SPDX 2.3 SBOM (JSON) of the Ringmesh image: the Debian packages of
its root (PACKAGES_TSV: name, version, architecture per line) and the Rust
crates linked into the ringmesh binary (the normal dependencies of the
ringmesh package, from `cargo metadata --locked`).

    sbom.py PACKAGES_TSV VERSION > ringmesh.spdx.json
"""

import datetime
import json
import re
import subprocess
import sys
import uuid


def spdx_id(kind, name, version):
    return "SPDXRef-" + re.sub(r"[^A-Za-z0-9.-]", "-", f"{kind}-{name}-{version}")


def license_expr(text):
    # Old crates write "MIT/Apache-2.0" for "MIT OR Apache-2.0".
    return " OR ".join(p.strip() for p in text.split("/")) if text else "NOASSERTION"


def crates():
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked"],
            check=True, capture_output=True, text=True,
        ).stdout
    )
    by_id = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root = next(p["id"] for p in meta["packages"] if p["name"] == "ringmesh")
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for dep in nodes[pid]["deps"]:
            # Only what is linked into the binary: normal dependencies.
            if any(k["kind"] is None for k in dep["dep_kinds"]):
                todo.append(dep["pkg"])
    return [by_id[p] for p in sorted(seen) if p != root], by_id[root]


def main():
    tsv, version = sys.argv[1], sys.argv[2]
    linked, root = crates()
    root_id = spdx_id("ringmesh", "ringmesh", version)
    packages = [{
        "SPDXID": root_id,
        "name": "ringmesh",
        "versionInfo": version,
        "downloadLocation": "NOASSERTION",
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": license_expr(root.get("license")),
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "CONTAINER",
    }]
    relationships = [{
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": root_id,
    }]
    for c in linked:
        pid = spdx_id("crate", c["name"], c["version"])
        packages.append({
            "SPDXID": pid,
            "name": c["name"],
            "versionInfo": c["version"],
            "downloadLocation": "NOASSERTION" if c.get("source") is None
            else f"https://crates.io/crates/{c['name']}/{c['version']}",
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": license_expr(c.get("license")),
            "copyrightText": "NOASSERTION",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": f"pkg:cargo/{c['name']}@{c['version']}",
            }],
        })
        relationships.append({
            "spdxElementId": root_id, "relationshipType": "CONTAINS", "relatedSpdxElement": pid,
        })
    with open(tsv) as f:
        for line in f:
            name, ver, arch = line.rstrip("\n").split("\t")
            pid = spdx_id("deb", name, ver)
            packages.append({
                "SPDXID": pid,
                "name": name,
                "versionInfo": ver,
                "downloadLocation": "NOASSERTION",
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": "NOASSERTION",
                "copyrightText": "NOASSERTION",
                "externalRefs": [{
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": f"pkg:deb/debian/{name}@{ver}?arch={arch}&distro=bookworm",
                }],
            })
            relationships.append({
                "spdxElementId": root_id, "relationshipType": "CONTAINS", "relatedSpdxElement": pid,
            })
    doc = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"ringmesh-image-{version}",
        "documentNamespace": f"https://ringmesh.invalid/spdx/ringmesh-{version}-{uuid.uuid4()}",
        "creationInfo": {
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "creators": ["Tool: ringmesh helm/image/sbom.py"],
        },
        "packages": packages,
        "relationships": relationships,
    }
    json.dump(doc, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
