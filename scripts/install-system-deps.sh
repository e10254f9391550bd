#!/bin/sh
# Installs the Debian packages vit-dt's local Slurm cluster, MPI launcher and container runtime need
# (docs/local-cluster.md; charliecloud-runtime's ch-run: docs/clusters.md, Containers), and the OpenSSH
# server, client and rsync the remote-submission tests use (a real sshd stands in for a login node:
# docs/clusters.md#remote-submission). Idempotent: when everything is installed already it does nothing,
# so repeated CI runs cost well under a second. Run as root on Debian 12 (systemd not needed:
# the packages start no service here, `vit-dt cluster up` starts the daemons itself).
set -eu

PACKAGES="slurmctld slurmd slurm-client munge libpmix2 slurmdbd mariadb-server openmpi-bin libopenmpi-dev
openssh-server openssh-client rsync"
# ch-run, the container runtime of tests/e2e/test_container_slurm.py (unprivileged, from a directory image)
PACKAGES="$PACKAGES charliecloud-runtime"

if [ "$(id -u)" -ne 0 ]; then
    echo "install-system-deps.sh: must run as root (apt-get install), current uid is $(id -u)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps.sh: apt-get not found; this script supports Debian 12 only" >&2
    exit 1
fi

missing=""
for pkg in $PACKAGES; do
    # "install ok installed" is dpkg's status of a fully installed package.
    if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" != "install ok installed" ]; then
        missing="$missing $pkg"
    fi
done

if [ -z "$missing" ]; then
    echo "install-system-deps.sh: all packages present:$(printf ' %s' $PACKAGES)"
    exit 0
fi

echo "install-system-deps.sh: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d 101: maintainer scripts must not try to start services (there is no init system).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    created_policy=1
fi
cleanup() { if [ "$created_policy" -eq 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

apt-get update -qq
# $missing is a space-separated list of package names: word splitting is intended.
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
echo "install-system-deps.sh: done"
