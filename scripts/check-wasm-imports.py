#!/usr/bin/env python3
"""Fails unless every import of a wasm module is one Envoy provides.

Envoy (proxy-wasm-cpp-host) links `env.proxy_*` host calls and a fixed subset of
`wasi_snapshot_preview1` (include/proxy-wasm/exports.h, FOR_ALL_WASI_FUNCTIONS). Any other import
makes the module fail to load at runtime (e.g. wasm-bindgen shims pulled in on
wasm32-unknown-unknown), so the build refuses such a module and names the import.
"""
import sys

ENVOY_WASI = {
    "fd_write", "fd_read", "fd_seek", "fd_close", "fd_fdstat_get", "environ_get",
    "environ_sizes_get", "args_get", "args_sizes_get", "clock_time_get", "random_get",
    "proc_exit", "path_open", "fd_prestat_get", "fd_prestat_dir_name",
}


def read_leb(data, pos):
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def read_name(data, pos):
    length, pos = read_leb(data, pos)
    return data[pos:pos + length].decode("utf-8"), pos + length


def imports(data):
    if data[:4] != b"\0asm":
        raise ValueError("not a wasm module")
    pos = 8
    while pos < len(data):
        section_id = data[pos]
        size, pos = read_leb(data, pos + 1)
        end = pos + size
        if section_id == 2:
            count, pos = read_leb(data, pos)
            for _ in range(count):
                module, pos = read_name(data, pos)
                name, pos = read_name(data, pos)
                kind = data[pos]
                pos += 1
                if kind == 0:  # function: type index
                    _, pos = read_leb(data, pos)
                elif kind == 1:  # table: reftype + limits
                    pos += 1
                    flags, pos = read_leb(data, pos)
                    _, pos = read_leb(data, pos)
                    if flags & 1:
                        _, pos = read_leb(data, pos)
                elif kind == 2:  # memory: limits
                    flags, pos = read_leb(data, pos)
                    _, pos = read_leb(data, pos)
                    if flags & 1:
                        _, pos = read_leb(data, pos)
                elif kind == 3:  # global: valtype + mutability
                    pos += 2
                yield module, name
        pos = end


def main():
    path = sys.argv[1]
    with open(path, "rb") as f:
        data = f.read()
    bad = []
    count = 0
    for module, name in imports(data):
        count += 1
        allowed = (module == "env" and name.startswith("proxy_")) or (
            module == "wasi_snapshot_preview1" and name in ENVOY_WASI)
        if not allowed:
            bad.append(f"{module}.{name}")
    if bad:
        print(f"{path}: imports Envoy does not provide: {', '.join(bad)}", file=sys.stderr)
        sys.exit(1)
    print(f"{path}: {count} imports, all env.proxy_* or Envoy's WASI subset")


if __name__ == "__main__":
    main()
