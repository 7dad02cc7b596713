#!/usr/bin/env python3
"""Checks the daemon's layering: every #include of a daemon header must be
of the file's own folder or of a layer its folder declares (tether_layer()
in daemon/<folder>/CMakeLists.txt); gRPC headers only in folders declared
GRPC; and the declared layers must not form a cycle.

  check_layers.py --layers build/daemon/layers.txt --root daemon

layers.txt has one line per folder: "<folder> <yes|no> <layer,layer,...>".
Files directly in --root (tetherd.cc, main.cc) wire everything: unchecked.
Exit status 1 and one line per violation ("file:line: ...") on failure.
"""
import argparse
import os
import re
import sys

INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]')
GRPC = re.compile(r'^(grpc|grpcpp)/|\.grpc\.pb\.h$|^proto/(peer|admin)\.pb\.h$|^(peer|admin)\.pb\.h$')


def read_layers(path):
    layers = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            folder, grpc = parts[0], parts[1] == "yes"
            deps = set(parts[2].split(",")) if len(parts) > 2 and parts[2] else set()
            layers[folder] = (grpc, deps)
    return layers


def find_cycle(layers):
    state = {}

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(layers.get(node, (False, set()))[1]):
            if state.get(dep) == "open":
                return path + [node, dep]
            if dep not in state:
                found = visit(dep, path + [node])
                if found:
                    return found
        state[node] = "done"
        return None

    for node in sorted(layers):
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


def check(root, layers):
    errors = []
    for folder in sorted(os.listdir(root)):
        fdir = os.path.join(root, folder)
        if not os.path.isdir(fdir):
            continue
        if folder not in layers:
            errors.append(f"{fdir}: folder is not a layer (no tether_layer() in its CMakeLists.txt)")
            continue
        grpc_ok, deps = layers[folder]
        for dirpath, _, files in os.walk(fdir):
            for name in sorted(files):
                if not name.endswith((".h", ".cc")):
                    continue
                path = os.path.join(dirpath, name)
                with open(path, errors="replace") as f:
                    for n, line in enumerate(f, 1):
                        m = INCLUDE.match(line)
                        if not m:
                            continue
                        header = m.group(2)
                        if GRPC.search(header) and not grpc_ok:
                            errors.append(f"{path}:{n}: {folder}/ may not include gRPC ({header}); "
                                          "only layers declared GRPC may")
                        if m.group(1) == '"' and header.startswith("daemon/"):
                            parts = header.split("/")
                            if len(parts) < 3:
                                errors.append(f"{path}:{n}: {folder}/ includes {header}, "
                                              "above every layer")
                                continue
                            target = parts[1]
                            if target != folder and target not in deps:
                                errors.append(f"{path}:{n}: {folder}/ includes {header}, but "
                                              f"layer '{target}' is not among {folder}'s layers "
                                              f"({', '.join(sorted(deps)) or 'none'})")
    return errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", required=True)
    ap.add_argument("--root", required=True)
    args = ap.parse_args()
    layers = read_layers(args.layers)
    errors = []
    cycle = find_cycle(layers)
    if cycle:
        errors.append("layers form a cycle: " + " -> ".join(cycle))
    for folder, (_, deps) in sorted(layers.items()):
        for dep in sorted(deps - set(layers)):
            errors.append(f"layer '{folder}' declares unknown layer '{dep}'")
    errors += check(args.root, layers)
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        print(f"check_layers: {len(errors)} violation(s); see docs/architecture.md, 'The layers'",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
