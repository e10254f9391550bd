"""Which network interface a rank's rendezvous and collectives would use, checked before they can hang.

A common multi-node failure is NCCL (or gloo) picking, or being told to pick, an interface the other nodes cannot
reach, and then hanging at init until the timeout. Before the rendezvous each preflight rank resolves the master
address, finds the local interface the kernel routes to it (a connected UDP socket: no packet is sent), and checks
that NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME name interfaces this node has, with each library's own matching rules.
"""
from __future__ import annotations

import fcntl
import socket
import struct
from collections.abc import Mapping

SIOCGIFADDR = 0x8915   # Linux ioctl: an interface's IPv4 address


def ipv4_interfaces() -> dict[str, str]:
    """Interface name -> IPv4 address, for the interfaces of this node that have one."""
    found = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, struct.pack("256s", name[:15].encode()))
            except OSError:      # no IPv4 address on it
                continue
            found[name] = socket.inet_ntoa(packed[20:24])
    return found


def route_source(address: str, port: int) -> str:
    """The local IPv4 address the kernel would send from to reach `address` (nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((address, port))
        return probe.getsockname()[0]


def nccl_matches(spec: str, names: list[str]) -> list[str]:
    """The interfaces NCCL_SOCKET_IFNAME selects: comma-separated prefixes, `=` for exact names, `^` to exclude."""
    exclude = spec.startswith("^")
    body = spec[1:] if exclude else spec
    exact = body.startswith("=")
    patterns = [p for p in (body[1:] if exact else body).split(",") if p]
    hit = (lambda n: n in patterns) if exact else (lambda n: any(n.startswith(p) for p in patterns))
    return [n for n in names if hit(n) != exclude]


def ifname_problems(environ: Mapping[str, str], names: list[str]) -> list[str]:
    """What NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME ask for that this node does not have."""
    problems = []
    nccl = environ.get("NCCL_SOCKET_IFNAME")
    if nccl and not nccl_matches(nccl, names):
        problems.append(f"NCCL_SOCKET_IFNAME={nccl} matches no interface here (have: {', '.join(names)})")
    gloo = environ.get("GLOO_SOCKET_IFNAME")
    missing = [n for n in (gloo or "").split(",") if n and n not in names]
    if missing:
        problems.append(f"GLOO_SOCKET_IFNAME={gloo}: no interface {', '.join(missing)} here (have: {', '.join(names)})")
    return problems


def network_report(master_addr: str, master_port: int, environ: Mapping[str, str]) -> tuple[bool, str]:
    """(ok, detail): the master's address, the interface that reaches it, and any interface setting that cannot
    work on this node."""
    try:
        master_ip = socket.gethostbyname(master_addr)
    except OSError as exc:
        return False, f"MASTER_ADDR {master_addr} does not resolve here: {exc}"
    interfaces = ipv4_interfaces()
    try:
        source = route_source(master_ip, master_port)
    except OSError as exc:
        return False, f"no route to MASTER_ADDR {master_addr} ({master_ip}): {exc}"
    via = next((name for name, ip in interfaces.items() if ip == source), "?")
    detail = f"{master_addr} ({master_ip}) via {via} ({source})"
    problems = ifname_problems(environ, sorted(interfaces))
    return not problems, "; ".join([*problems, detail])
