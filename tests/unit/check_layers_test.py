#!/usr/bin/env python3
"""check_layers.py must pass the real daemon tree and fail a copy of it with
a forbidden include: a lower layer including a higher one (home/ ->
notifier/, the cycle this project once had), gRPC outside peer/ and admin/,
and a declared cycle between layers."""
import argparse
import shutil
import subprocess
import sys
import tempfile
import os


def run(checker, layers, root):
    p = subprocess.run([sys.executable, checker, "--layers", layers, "--root", root],
                       capture_output=True, text=True)
    return p.returncode, p.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checker", required=True)
    ap.add_argument("--layers", required=True)
    ap.add_argument("--root", required=True)
    a = ap.parse_args()
    failures = []
    rc, err = run(a.checker, a.layers, a.root)
    if rc != 0:
        failures.append("the real tree fails the check:\n" + err)

    cases = {
        "home includes notifier": ("home/segment_registry.cc",
                                   '#include "daemon/notifier/notifier_source.h"\n',
                                   "layer 'notifier' is not among home's layers"),
        "gRPC in mapper": ("mapper/data_path.cc", "#include <grpcpp/grpcpp.h>\n",
                           "may not include gRPC"),
        "common includes transport": ("common/errors.h",
                                      '#include "daemon/transport/transport.h"\n',
                                      "layer 'transport' is not among common's layers"),
    }
    for name, (rel, line, expect) in cases.items():
        with tempfile.TemporaryDirectory() as tmp:
            root = os.path.join(tmp, "daemon")
            shutil.copytree(a.root, root)
            path = os.path.join(root, rel)
            with open(path) as f:
                text = f.read()
            with open(path, "w") as f:
                f.write(line + text)
            rc, err = run(a.checker, a.layers, root)
            if rc == 0 or expect not in err:
                failures.append(f"{name}: expected a failure saying '{expect}', got rc={rc}:\n{err}")

    with tempfile.TemporaryDirectory() as tmp:
        layers = os.path.join(tmp, "layers.txt")
        with open(a.layers) as f:
            text = f.read()
        # common now claims mapper: common -> mapper -> ... -> common.
        text = "\n".join(l + ",mapper" if l.startswith("common ") and len(l.split()) > 2
                         else (l + " mapper" if l.startswith("common ") else l)
                         for l in text.splitlines()) + "\n"
        with open(layers, "w") as f:
            f.write(text)
        rc, err = run(a.checker, layers, a.root)
        if rc == 0 or "cycle" not in err:
            failures.append(f"declared cycle: expected 'cycle', got rc={rc}:\n{err}")

    for f in failures:
        print("FAIL:", f)
    print("check_layers_test:", "FAILED" if failures else "ok (1 clean tree, 4 violations caught)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
