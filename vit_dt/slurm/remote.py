"""The login node `vit-dt sweep --remote` works on, reached over SSH from another machine (a laptop).

Every call goes through the system's OpenSSH client over one shared connection: the first command opens a master
(ControlMaster, at ControlPath, kept ControlPersist after the last use), asking for the password or the MFA code
once; every later ssh and rsync reuses it without asking again.

What travels, and how:
- Commands go as a POSIX sh script on ssh's standard input; ssh's own command line only says `/bin/sh -s`, so
  whatever the login node's shell is (bash, zsh, tcsh), it never parses an override. An override with spaces,
  quotes or `$(...)` arrives as typed (each word is single-quoted for /bin/sh).
- The ssh and rsync clients run without the secrets of this environment (WANDB_API_KEY and anything named like a
  key, token, secret or password): a `SendEnv` line in an ssh config would otherwise forward them. On the login
  node vit-dt and W&B read the key from that machine's own environment or ~/.netrc (docs/clusters.md).
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from vit_dt.config.schema import RemoteSchema

SHELL = "/bin/sh -s"          # what ssh runs on the login node: the script comes on its standard input
_HOST = re.compile(r"[A-Za-z0-9_.-]+")          # a name, an IPv4 address or an ssh_config Host alias
_USER = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*")
_PERSIST = re.compile(r"yes|no|\d+[smhdwSMHDW]?")
NOT_INSTALLED = 127           # the shell's status for a command it cannot find


class RemoteError(ValueError):
    """The login node cannot be reached or used; nothing was queued there."""


@dataclass(frozen=True)
class RemoteSpec:
    """cluster.remote, typed. Defaults are the schema's (vit_dt.config.schema.RemoteSchema)."""
    host: str
    user: str | None = RemoteSchema.user
    port: int | None = RemoteSchema.port
    python: str = RemoteSchema.python
    work_dir: str = RemoteSchema.work_dir
    setup: tuple[str, ...] = ()
    ssh_options: tuple[str, ...] = ()
    control_path: str = RemoteSchema.control_path
    control_persist: str = RemoteSchema.control_persist

    @property
    def where(self) -> str:
        """How a person names it: user@host:port (the parts ssh was given)."""
        return f"{self.user + '@' if self.user else ''}{self.host}{':' + str(self.port) if self.port else ''}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "setup": list(self.setup), "ssh_options": list(self.ssh_options)}

    @classmethod
    def from_config(cls, block: Mapping[str, Any] | None, destination: str | None = None) -> RemoteSpec:
        """From the profile's `remote:` block (or a recorded one); `destination` ([user@]host[:port], from
        `--remote`) replaces its host, and its user and port where it names them."""
        data = dict(block or {})
        valid = tuple(f.name for f in fields(RemoteSchema))
        unknown = sorted(set(map(str, data)) - set(valid))
        if unknown:
            raise RemoteError(f"unknown key(s) in cluster.remote: {', '.join(unknown)}; valid keys: "
                              f"{', '.join(valid)}")
        if destination:
            user, host, port = parse_destination(destination)
            data.update(host=host, **({"user": user} if user else {}), **({"port": port} if port else {}))
        defaults = RemoteSchema()
        values = {f.name: getattr(defaults, f.name) if data.get(f.name) is None else data[f.name]
                  for f in fields(RemoteSchema)}
        if not values["host"]:
            raise RemoteError("no login node to submit to: pass --remote [user@]host[:port], or set "
                              "cluster.remote.host in the cluster profile (docs/clusters.md#remote-submission)")
        _check(_HOST, values["host"], "cluster.remote.host", "a host name, an IPv4 address or an ssh_config alias")
        if values["user"] is not None:
            _check(_USER, str(values["user"]), "cluster.remote.user", "a user name")
        port = values["port"]
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
            raise RemoteError(f"cluster.remote.port={port!r} is invalid: a TCP port 1-65535, or null (ssh's choice)")
        _check(_PERSIST, str(values["control_persist"]), "cluster.remote.control_persist",
               "yes, no, or a time such as 600, 10m, 1h")
        for key in ("python", "work_dir", "control_path"):
            if not str(values[key]).strip() or "\n" in str(values[key]):
                raise RemoteError(f"cluster.remote.{key}={values[key]!r} is invalid: one non-empty line")
        for key in ("setup", "ssh_options"):
            if isinstance(values[key], (str, bytes)) or not isinstance(values[key], Sequence):
                raise RemoteError(f"cluster.remote.{key} must be a list of strings, got {values[key]!r}")
        return cls(host=str(values["host"]), user=None if values["user"] is None else str(values["user"]),
                   port=port, python=str(values["python"]), work_dir=str(values["work_dir"]),
                   setup=tuple(map(str, values["setup"])), ssh_options=tuple(map(str, values["ssh_options"])),
                   control_path=str(values["control_path"]), control_persist=str(values["control_persist"]))


def _check(pattern: re.Pattern, value: str, key: str, what: str) -> None:
    if not pattern.fullmatch(value) or value.startswith("-"):
        raise RemoteError(f"{key}={value!r} is invalid: {what}")


def parse_destination(text: str) -> tuple[str | None, str, int | None]:
    """`[user@]host[:port]` -> (user or None, host, port or None); a RemoteError names what is wrong."""
    user, _, rest = text.rpartition("@")
    host, colon, port_text = rest.partition(":")
    if not host or (colon and not port_text.isdigit()) or "@" in user:
        raise RemoteError(f"--remote {text!r} is invalid: the form is [user@]host[:port], e.g. alice@login.example.org "
                          f"or login.example.org:2222")
    _check(_HOST, host, "--remote host", "a host name, an IPv4 address or an ssh_config alias")
    if user:
        _check(_USER, user, "--remote user", "a user name")
    port = int(port_text) if colon else None
    if port is not None and not 1 <= port <= 65535:
        raise RemoteError(f"--remote {text!r}: port {port} is invalid: a TCP port 1-65535")
    return user or None, host, port


# --- the commands ssh and rsync run ----------------------------------------------------------------------------
def ssh_base(spec: RemoteSpec) -> list[str]:
    """ssh and its options every call shares: the same ControlPath, so every call finds the one connection."""
    argv = ["ssh", "-o", f"ControlPath={spec.control_path}"]
    if spec.port is not None:
        argv += ["-p", str(spec.port)]
    if spec.user is not None:
        argv += ["-l", spec.user]
    return argv + list(spec.ssh_options)


def master_argv(spec: RemoteSpec) -> list[str]:
    """Open the shared connection and put it in the background once authenticated (-f): MFA is asked here."""
    return ssh_base(spec) + ["-o", "ControlMaster=yes", "-o", f"ControlPersist={spec.control_persist}", "-N", "-f",
                             "--", spec.host]


def check_argv(spec: RemoteSpec, operation: str = "check") -> list[str]:
    """`ssh -O check|exit`: ask the shared connection whether it is up, or to close."""
    return ssh_base(spec) + ["-O", operation, "--", spec.host]


def command_argv(spec: RemoteSpec) -> list[str]:
    """Run a script (on standard input) over the shared connection. ControlMaster=no: this call never becomes a
    master itself (one that would hold our caller's pipes open for ControlPersist)."""
    return ssh_base(spec) + ["-o", "ControlMaster=no", "-T", "--", spec.host, SHELL]


def rsync_argv(spec: RemoteSpec, sources: Sequence[str], target: str, filters: Sequence[str] = ()) -> list[str]:
    """rsync over the shared connection; a path on the login node is written `:PATH` (the host is added here)."""
    ssh = shlex.join(ssh_base(spec) + ["-o", "ControlMaster=no"])
    where = lambda path: f"{spec.host}{path}" if path.startswith(":") else path  # noqa: E731
    return ["rsync", "-a", "-e", ssh, *filters, *map(where, sources), where(target)]


def shell_word(path: str) -> str:
    """A path as one sh word on the login node, `~/...` expanded there (quoting would keep the tilde literal)."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def script(lines: Sequence[str]) -> str:
    """The script ssh sends: in braces, so the shell reads all of it before running any (a command that reads
    standard input cannot eat the rest); every command's input is /dev/null."""
    return "{\n" + "\n".join(lines) + "\n}\n"


def python_command(spec: RemoteSpec, argv: Sequence[str], *, code_dir: str | None, env: Mapping[str, str] = ()
                   ) -> str:
    """The sh line that runs `<python> ARGV` on the login node, importing vit_dt from `code_dir` (the shipped
    snapshot) before anything installed there."""
    assigns = [f"{name}={shell_word(value)}" for name, value in dict(env).items()]
    if code_dir is not None:
        path = f"{shell_word(code_dir)}:{shell_word(code_dir + '/launchers')}"
        assigns += [f'PYTHONPATH={path}"${{PYTHONPATH:+:$PYTHONPATH}}"', "PYTHONSAFEPATH=1"]
    return " ".join(["exec", "env", *assigns, shell_word(spec.python), *map(shlex.quote, argv), "</dev/null"])


def setup_lines(spec: RemoteSpec) -> list[str]:
    """The profile's setup lines (module loads), stopping at the first that fails."""
    return ["set -e", *spec.setup, "set +e"] if spec.setup else []


def ssh_env() -> dict[str, str]:
    """This environment without its secrets: what the ssh and rsync clients run with."""
    from vit_dt.records.secrets import looks_secret, secret_values

    secrets = secret_values()
    return {name: value for name, value in os.environ.items()
            if not looks_secret(name) and not name.startswith("WANDB_") and not any(s in value for s in secrets)}


def refuse_secrets(words: Sequence[str], what: str, *, shell: bool = False) -> None:
    """A secret must not travel: refuse an override under a secret-looking key, or one holding $WANDB_API_KEY. With
    `shell` (setup lines): one holding the key, or setting a secret-looking variable to a literal (reading it there,
    `export WANDB_API_KEY=$(cat ~/.wandb_key)`, is what such a line should do)."""
    from vit_dt.records.secrets import holds_secret, looks_secret, scrub_override

    for word in words:
        if shell:
            literal = [name for name in _SHELL_ASSIGNMENT.findall(word) if looks_secret(name)]
            bad, shown = holds_secret(word) or bool(literal), f"setting {', '.join(literal) or 'a variable'}"
        else:
            bad, shown = scrub_override(word) != word or holds_secret(word), repr(scrub_override(word))
        if bad:
            raise RemoteError(f"{what} {shown} would send a secret to the login node; vit-dt never sends one: set it "
                              f"in the login node's own environment or ~/.netrc instead "
                              f"(docs/clusters.md#remote-submission)")


_SHELL_ASSIGNMENT = re.compile(r"(\w+)=(?![\"']?\$)[^\s;]")     # NAME=value, not NAME=$(...) or NAME="$VAR"


# --- the connection ---------------------------------------------------------------------------------------------
class Connection:
    """The shared connection to one login node; `run` sends a script over it."""

    def __init__(self, spec: RemoteSpec) -> None:
        self.spec = spec

    def open(self) -> None:
        """Reuse the shared connection, or open it (asking for a password or MFA code here, once)."""
        if self._call(check_argv(self.spec)).returncode == 0:
            return
        _make_control_dir(self.spec.control_path)
        # The master stays in the background: it must not hold our stdout/stderr (a caller reading them would wait
        # for ControlPersist to end), so its messages go to a file.
        with tempfile.TemporaryFile(mode="w+") as errors:
            try:
                done = subprocess.run(master_argv(self.spec), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=errors, env=ssh_env(), timeout=300)
            except FileNotFoundError:
                raise RemoteError("ssh is not installed here: install OpenSSH's client (Debian: apt-get install "
                                  "openssh-client rsync)") from None
            except subprocess.TimeoutExpired:
                raise RemoteError(f"no connection to {self.spec.where} after 300 s") from None
            errors.seek(0)
            message = errors.read().strip()
        if done.returncode != 0:
            raise RemoteError(f"cannot connect to {self.spec.where} (ssh exit status {done.returncode}):\n{message}")

    def close(self) -> None:
        self._call(check_argv(self.spec, "exit"))

    def run(self, lines: Sequence[str], *, capture: bool = False, timeout: float | None = None
            ) -> subprocess.CompletedProcess:
        """Run the script; without `capture` its output goes straight to ours, as the login node wrote it."""
        pipe = subprocess.PIPE if capture else None
        return subprocess.run(command_argv(self.spec), input=script(lines), text=True, stdout=pipe, stderr=pipe,
                              env=ssh_env(), timeout=timeout)

    def rsync(self, sources: Sequence[str], target: str, filters: Sequence[str] = ()) -> None:
        argv = rsync_argv(self.spec, sources, target, filters)
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=ssh_env())
        except FileNotFoundError:
            raise RemoteError("rsync is not installed here: install it (Debian: apt-get install rsync)") from None
        if done.returncode != 0:
            raise RemoteError(f"rsync {' '.join(sources)} -> {target} failed (exit status {done.returncode}):\n"
                              f"{done.stderr.strip()}")

    def _call(self, argv: list[str]) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=ssh_env(),
                                  timeout=60)
        except FileNotFoundError:
            raise RemoteError("ssh is not installed here: install OpenSSH's client (Debian: apt-get install "
                              "openssh-client rsync)") from None
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, 255, "", "timed out")


def _make_control_dir(control_path: str) -> None:
    """ssh does not create the socket's folder."""
    folder = Path(os.path.expanduser(control_path)).parent
    if "%" not in str(folder):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
