"""The login node reached over SSH (vit_dt/slurm/remote.py): the `remote:` block and `--remote [user@]host[:port]`,
the ssh and rsync command lines (one shared connection: ControlMaster/ControlPath/ControlPersist), the script sent
on ssh's standard input (run here by a real /bin/sh: overrides with spaces, quotes and $(...) arrive as typed), and
what never travels (the W&B key: not in any argv, not in the ssh client's environment)."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields

import pytest

from vit_dt.config.schema import RemoteSchema
from vit_dt.slurm.remote import (
    SHELL,
    RemoteError,
    RemoteSpec,
    check_argv,
    command_argv,
    master_argv,
    parse_destination,
    python_command,
    refuse_secrets,
    rsync_argv,
    script,
    setup_lines,
    shell_word,
    ssh_env,
)

FAKE_KEY = "fake-wandb-key-0123456789abcdef"


def _spec(**keys) -> RemoteSpec:
    return RemoteSpec.from_config({"host": "login.example.org", **keys})


@pytest.mark.parametrize("text, parsed", [
    ("login.example.org", (None, "login.example.org", None)),
    ("alice@login.example.org", ("alice", "login.example.org", None)),
    ("alice@10.0.0.5:2222", ("alice", "10.0.0.5", 2222)),
    ("mycluster", (None, "mycluster", None)),          # an ssh_config Host alias
])
def test_a_destination_is_user_host_and_port(text, parsed):
    assert parse_destination(text) == parsed


@pytest.mark.parametrize("text, says", [
    ("", "[user@]host[:port]"), ("host:ssh", "[user@]host[:port]"), ("a@b@c", "[user@]host[:port]"),
    ("host:70000", "1-65535"), ("-oProxyCommand=touch_x", "--remote host"), ("bad host", "--remote host"),
])
def test_a_bad_destination_is_refused_naming_the_form(text, says):
    with pytest.raises(RemoteError, match="invalid") as info:
        parse_destination(text)
    assert says in str(info.value)


def test_the_block_takes_its_defaults_from_the_schema_and_the_destination_names_the_host():
    spec = RemoteSpec.from_config({}, "bob@login:2200")
    defaults = RemoteSchema()
    assert (spec.host, spec.user, spec.port) == ("login", "bob", 2200)
    for name in ("python", "work_dir", "control_path", "control_persist"):
        assert getattr(spec, name) == getattr(defaults, name)
    kept = RemoteSpec.from_config({"host": "old", "user": "alice", "port": 22}, "new")
    assert (kept.host, kept.user, kept.port) == ("new", "alice", 22)     # only what --remote names is replaced


def test_without_a_host_or_with_a_misspelt_key_the_block_is_refused():
    with pytest.raises(RemoteError, match=r"--remote \[user@\]host\[:port\].*cluster.remote.host"):
        RemoteSpec.from_config({})
    with pytest.raises(RemoteError, match="unknown key.*pyhton; valid keys: " + ", ".join(
            f.name for f in fields(RemoteSchema))):
        RemoteSpec.from_config({"host": "h", "pyhton": "x"})
    with pytest.raises(RemoteError, match="control_persist='forever' is invalid"):
        _spec(control_persist="forever")
    with pytest.raises(RemoteError, match="port=0 is invalid"):
        _spec(port=0)


def test_every_call_shares_one_connection_and_only_the_first_opens_it():
    spec = _spec(user="alice", port=2222, ssh_options=["-i", "~/.ssh/site_key"], control_persist="15m")
    master, command, check = master_argv(spec), command_argv(spec), check_argv(spec)
    for argv in (master, command, check):
        assert argv[0] == "ssh" and "ControlPath=~/.ssh/vit-dt-%C" in argv
        assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "alice"
        assert argv[argv.index("-i") + 1] == "~/.ssh/site_key"
    # the master: asks for the password/MFA, then goes to the background and stays ControlPersist
    assert {"ControlMaster=yes", "ControlPersist=15m", "-N", "-f"} <= set(master) and master[-2:] == ["--", spec.host]
    # a command: through the master, never becoming one itself; the script comes on stdin
    assert "ControlMaster=no" in command and command[-3:] == ["--", spec.host, SHELL]
    assert check[-4:] == ["-O", "check", "--", spec.host]
    rsync = rsync_argv(spec, ["/here/code"], ":/there/sweep/", ["--exclude=/code/"])
    ssh = rsync[rsync.index("-e") + 1]
    assert "ControlPath=~/.ssh/vit-dt-%C" in ssh and "ControlMaster=no" in ssh and "-p 2222" in ssh
    assert rsync[-3:] == ["--exclude=/code/", "/here/code", f"{spec.host}:/there/sweep/"]


WEIRD = ["run_name=\"it's a test\"", "a b  c", "dollar=$HOME", "x;touch {tmp}/semicolon", "$(touch {tmp}/dollar)",
         "`touch {tmp}/backtick`", "back\\slash", "new\nline", "'single'", "*"]


def test_the_script_hands_every_word_over_as_typed_through_a_real_shell(tmp_path):
    words = [w.format(tmp=tmp_path) for w in WEIRD]
    code_dir = str(tmp_path / "sweep dir" / "code")
    spec = _spec(python=sys.executable, setup=[f"cd {tmp_path}"])
    printer = "import json, os, sys; print(json.dumps([sys.argv[1:], os.environ['PYTHONPATH'], os.getcwd()]))"
    text = script([*setup_lines(spec), python_command(spec, ["-c", printer, *words], code_dir=code_dir,
                                                      env={"VIT_DT_OUT_DIR": "~/vit dt"})])
    done = subprocess.run(["/bin/sh", "-s"], input=text, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": "/earlier"})
    assert done.returncode == 0, done.stderr
    argv, path, cwd = json.loads(done.stdout)
    assert argv == words
    assert path == f"{code_dir}:{code_dir}/launchers:/earlier" and cwd == str(tmp_path)
    assert not list(tmp_path.glob("semicolon")) + list(tmp_path.glob("dollar")) + list(tmp_path.glob("backtick"))


def test_a_path_under_the_home_directory_is_expanded_there(tmp_path):
    text = script([f"printf '%s\\n' {shell_word('~/a b')} {shell_word('~')} {shell_word('/abs/~x')}"])
    done = subprocess.run(["/bin/sh", "-s"], input=text, capture_output=True, text=True, timeout=60,
                          env={"HOME": str(tmp_path)})
    assert done.stdout.splitlines() == [f"{tmp_path}/a b", str(tmp_path), "/abs/~x"]


def test_a_failing_setup_line_stops_the_script():
    text = script([*setup_lines(_spec(setup=["false"])), "echo ran"])
    done = subprocess.run(["/bin/sh", "-s"], input=text, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "ran" not in done.stdout


def test_the_key_is_in_no_argv_and_not_in_the_ssh_clients_environment(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("SOME_VARIABLE", f"holds {FAKE_KEY} inside")
    monkeypatch.setenv("SITE_TOKEN", "abcdefgh12345")
    monkeypatch.setenv("SSH_AUTH_SOCK", "/tmp/agent.sock")
    spec = _spec(python="~/venv/bin/python", ssh_options=["-o", "SendEnv=WANDB_*"])
    sweep = python_command(spec, ["-m", "vit_dt.cli", "sweep", "cluster=mycluster", "wandb.mode=offline"],
                           code_dir="/there/code")
    for argv in (master_argv(spec), command_argv(spec), check_argv(spec), rsync_argv(spec, ["a"], ":b"), [sweep]):
        assert FAKE_KEY not in " ".join(argv)
    env = ssh_env()
    assert FAKE_KEY not in json.dumps(env)
    assert "WANDB_API_KEY" not in env and "SITE_TOKEN" not in env and "SOME_VARIABLE" not in env
    assert env["SSH_AUTH_SOCK"] == "/tmp/agent.sock"           # the agent still authenticates


def test_an_override_that_would_carry_a_secret_is_refused_without_showing_it(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    for override in (f"+wandb.api_key={FAKE_KEY}", "+cluster.env.HF_TOKEN=hf_abcdefgh", f"run_name=x{FAKE_KEY}"):
        with pytest.raises(RemoteError, match="login node's own environment or ~/.netrc") as info:
            refuse_secrets([override], "the override")
        assert FAKE_KEY not in str(info.value) and "hf_abcdefgh" not in str(info.value)
    refuse_secrets(["cluster=mycluster", "run_name=${oc.env:USER}"], "the override")    # nothing secret: passes
    with pytest.raises(RemoteError, match="setup line setting WANDB_API_KEY would send a secret"):
        refuse_secrets(["module load x; export WANDB_API_KEY=abc123"], "a cluster.remote.setup line", shell=True)
    with pytest.raises(RemoteError, match="would send a secret"):
        refuse_secrets([f"echo {FAKE_KEY}"], "a cluster.remote.setup line", shell=True)
    refuse_secrets(["export WANDB_API_KEY=$(cat ~/.wandb_key)", 'export HF_TOKEN="$SITE_TOKEN"', "module load x"],
                   "a cluster.remote.setup line", shell=True)     # read there: passes
