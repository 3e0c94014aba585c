#!/usr/bin/env python3
"""Build the offline HTML template for `dvc plots show` / `dvc plots diff`.

Why
---
DVC's default page (``dvc_render.html.PAGE_HTML``) has a ``{scripts}``
placeholder that DVC fills with ``<script src="https://cdn.jsdelivr.net/...">``
tags for vega, vega-lite and vega-embed. Without internet those never load and
the page stays blank. This script writes ``dvc_plots_offline.html`` next to
itself: the same page, but with the three libraries' minified browser (UMD)
builds inlined, and *without* the ``{scripts}`` placeholder, so DVC's CDN tags
are never inserted and the page needs no network at all.

DVC (dvc_render.html.HTML) requires ``{plot_divs}`` in a custom template and
also fills ``{refresh_tag}`` and ``{scripts}`` when present; each of these
strings is replaced wherever it occurs, so the inlined JavaScript is checked
not to contain them.

Use
---
    python tools/plots_template/build.py            # (re)write the template
    python tools/plots_template/build.py --check    # exit 1 if it is stale

    dvc plots show --html-template tools/plots_template/dvc_plots_offline.html
    dvc plots diff HEAD~1 --html-template tools/plots_template/dvc_plots_offline.html

or once per repository (the path is relative to the .dvc/ directory):

    dvc config plots.html_template ../tools/plots_template/dvc_plots_offline.html

Needs ``npm`` (Node.js) and access to the npm registry; nothing is installed:
``npm pack`` downloads the three pinned tarballs into a temporary directory, and
their sha512 is checked against the ``integrity`` pinned below (the value that
``npm view PKG@VERSION dist.integrity`` prints).

Versions: the newest releases of the major versions DVC itself loads from the
CDN (vega 5, vega-lite 5, vega-embed 6), whose specs carry the vega-lite v5
``$schema``. They include fixes for vega's expression-language XSS advisories
that the CDN versions DVC pins (vega 5.20.2) lack. To upgrade, change PINS
(version + integrity) and rerun.

Licenses: each package must declare ``BSD-3-Clause``; its LICENSE text is put
in a ``/*! ... */`` banner in front of its code. The minified builds' own
``/*! ... */`` banners of bundled third-party code (e.g. fast-json-patch, MIT)
are kept verbatim; only the trailing ``//# sourceMappingURL`` line is dropped
(the .map files are not shipped).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "dvc_plots_offline.html"

# name: (version, npm dist.integrity, file inside the tarball). Load order matters:
# vega-lite needs the global `vega`, vega-embed needs `vega` and `vegaLite`.
PINS: dict[str, tuple[str, str, str]] = {
    "vega": (
        "5.33.1",
        "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
        "package/build/vega.min.js",
    ),
    "vega-lite": (
        "5.23.0",
        "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
        "package/build/vega-lite.min.js",
    ),
    "vega-embed": (
        "6.29.0",
        "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
        "package/build/vega-embed.min.js",
    ),
}
REQUIRED_LICENSE = "BSD-3-Clause"

# The vega 5.x npm tarballs ship no LICENSE file; this is the LICENSE of the
# vega/vega repository (https://github.com/vega/vega/blob/main/LICENSE), used
# only when a tarball lacks its own.
_BSD3_BODY = """All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this
   list of conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice,
   this list of conditions and the following disclaimer in the documentation
   and/or other materials provided with the distribution.

3. Neither the name of the copyright holder nor the names of its contributors
  may be used to endorse or promote products derived from this software
  without specific prior written permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT OWNER OR CONTRIBUTORS BE LIABLE
FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""
FALLBACK_LICENSES = {
    "vega": "Copyright (c) 2015-2023, University of Washington Interactive Data Lab\n" + _BSD3_BODY,
}

# Strings that must not occur in inlined code: the first two would end or garble
# the <script> element, the rest are placeholders dvc_render replaces anywhere.
FORBIDDEN = ("</script", "<!--", "{plot_divs}", "{scripts}", "{refresh_tag}")
MAX_BYTES = 2_000_000

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC Plot</title>
    <!--
    Offline page template for `dvc plots show/diff --html-template`.
    GENERATED by tools/plots_template/build.py; do not edit, rerun it.
    Inlined (no network needed): {summary}.
    Deliberately without DVC's scripts placeholder, where DVC would put
    script tags that load these libraries from a CDN.
    -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


class BuildError(RuntimeError):
    pass


def sri_sha512(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")


def npm_pack(specs: list[str], dest: Path) -> list[Path]:
    """Download the tarballs of `specs` (name@version) into `dest` with `npm pack`."""
    npm = shutil.which("npm")
    if npm is None:
        raise BuildError("npm not found: install Node.js/npm (e.g. `apt-get install npm`)")
    proc = subprocess.run(
        [npm, "pack", "--json", "--ignore-scripts", "--pack-destination", str(dest), *specs],
        cwd=dest, capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise BuildError(f"`npm pack {' '.join(specs)}` failed:\n{proc.stderr.strip()}")
    return [dest / item["filename"] for item in json.loads(proc.stdout)]


def read_package(name: str, tarball: Path) -> tuple[str, str]:
    """Verify the pinned tarball; return (license text, minified browser build)."""
    version, integrity, member = PINS[name]
    data = tarball.read_bytes()
    if sri_sha512(data) != integrity:
        raise BuildError(f"{name}@{version}: tarball sha512 {sri_sha512(data)} != pinned {integrity}")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        def text(path: str) -> str | None:
            try:
                f = tar.extractfile(path)
            except KeyError:
                return None
            return None if f is None else f.read().decode("utf-8")

        meta = json.loads(text("package/package.json") or "{}")
        if (meta.get("name"), meta.get("version")) != (name, version):
            raise BuildError(f"{tarball.name}: package.json says {meta.get('name')}@{meta.get('version')}")
        if meta.get("license") != REQUIRED_LICENSE:
            raise BuildError(f"{name}@{version}: license {meta.get('license')!r}, expected {REQUIRED_LICENSE}")
        license_text = text("package/LICENSE") or FALLBACK_LICENSES.get(name)
        if not license_text:
            raise BuildError(f"{name}@{version}: no LICENSE file in the tarball")
        code = text(member)
        if code is None:
            raise BuildError(f"{name}@{version}: {member} missing from the tarball")
    return license_text, code


def script_block(name: str, license_text: str, code: str) -> str:
    version = PINS[name][0]
    code = re.sub(r"\n//# sourceMappingURL=\S+\s*$", "\n", code).strip()
    for bad in FORBIDDEN:
        if bad.lower() in code.lower():
            raise BuildError(f"{name}@{version}: build contains {bad!r}, cannot inline it safely")
    license_text = license_text.strip()
    if "*/" in license_text:
        raise BuildError(f"{name}@{version}: LICENSE text contains '*/'")
    banner = (f"/*! {name} v{version} | https://www.npmjs.com/package/{name} | {REQUIRED_LICENSE}\n"
              f"{license_text}\n*/")
    return f"    <script>\n{banner}\n{code}\n    </script>"


def build() -> str:
    """Return the template's text (downloads the pinned packages)."""
    with tempfile.TemporaryDirectory(prefix="dvc-plots-template-") as tmp:
        specs = [f"{name}@{version}" for name, (version, _, _) in PINS.items()]
        tarballs = npm_pack(specs, Path(tmp))
        by_name = {}
        for tarball in tarballs:
            for name, (version, _, _) in PINS.items():
                if tarball.name == f"{name}-{version}.tgz":
                    by_name[name] = tarball
        if set(by_name) != set(PINS):
            raise BuildError(f"npm pack returned {[t.name for t in tarballs]}, expected {specs}")
        blocks = [script_block(name, *read_package(name, by_name[name])) for name in PINS]
    summary = ", ".join(f"{n} {v} ({REQUIRED_LICENSE})" for n, (v, _, _) in PINS.items())
    page = PAGE.format(summary=summary, scripts="\n".join(blocks))
    counts = {p: page.count(p) for p in ("{plot_divs}", "{refresh_tag}", "{scripts}")}
    if counts != {"{plot_divs}": 1, "{refresh_tag}": 1, "{scripts}": 0}:
        raise BuildError(f"placeholders in the page: {counts}")
    size = len(page.encode("utf-8"))
    if size >= MAX_BYTES:
        raise BuildError(f"template is {size} bytes, limit {MAX_BYTES}")
    return page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"where to write the template (default: {DEFAULT_OUTPUT.name} next to this script)")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if the output differs from a fresh build")
    args = parser.parse_args(argv)
    try:
        page = build()
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.is_file() else None
        if current != page:
            print(f"{args.output} is stale: rerun {Path(__file__).name}", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    tmp = args.output.with_name(args.output.name + ".tmp")
    tmp.write_text(page, encoding="utf-8", newline="\n")
    tmp.replace(args.output)
    print(f"wrote {args.output} ({len(page.encode('utf-8'))} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
