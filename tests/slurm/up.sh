#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine (Debian's slurm packages), for the tests.
# Installs slurmctld, slurmd, slurm-client and munge when missing; writes a single-node slurm.conf
# (node = this host, proctrack/linuxproc, task/none, no accounting) and a gres.conf declaring two
# fake GPUs (type "fake"; device-like files) so rules that ask for gpu=1 are scheduled; starts munged,
# slurmctld and slurmd; waits until sinfo shows the node idle. Facts behind each line:
# ../shared/SLURM-NOTES.md. Needs root. Stop it with tests/slurm/down.sh. Exit status 3: the packages
# could not be installed (the reason, apt's own lines, on stderr).
set -euo pipefail

# apt: when a step fails, its last output lines (apt's "E:" reason) go to stderr as one line and the
# script exits 3, which tests/test_slurm.py reads as "SLURM cannot be installed here" (not a SLURM bug).
apt_step() {
    local said
    if ! said=$("$@" 2>&1); then
        echo "up.sh: cannot install SLURM: \`$*\` failed: $(printf '%s\n' "$said" | grep -v '^\s*$' | tail -n 8 | paste -sd '|')" >&2
        exit 3
    fi
}
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt_step apt-get update -qq
    apt_step apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge
fi

host=$(hostname -s)
if ! getent hosts "$host" >/dev/null; then
    echo "127.0.0.1 $host" >>/etc/hosts
fi
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.85}' /proc/meminfo)

mkdir -p /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/lib/slurm/fakegpu /var/log/slurm
chown -R slurm:slurm /var/lib/slurm/slurmctld /var/log/slurm 2>/dev/null || true
for i in 0 1; do ln -sf /dev/null "/var/lib/slurm/fakegpu/gpu$i"; done

cat >/etc/slurm/slurm.conf <<CONF
ClusterName=ci
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
SchedulerParameters=sched_interval=2
GresTypes=gpu
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mb} Gres=gpu:fake:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
cat >/etc/slurm/gres.conf <<CONF
AutoDetect=off
NodeName=${host} Name=gpu Type=fake File=/var/lib/slurm/fakegpu/gpu[0-1]
CONF

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
mkdir -p /run/munge && chown munge:munge /run/munge
running /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged
running /run/slurmctld.pid || slurmctld -c
running /run/slurmd.pid || slurmd

for _ in $(seq 1 60); do
    state=$(sinfo -h -o %T 2>/dev/null | head -n1 || true)
    if [ "$state" = "idle" ] || [ "$state" = "mixed" ]; then
        echo "SLURM up: node $host, $cpus CPUs, ${mem_mb} MB, 2 fake GPUs"
        exit 0
    fi
    sleep 1
done
echo "SLURM did not become idle (sinfo: ${state:-none}); see /var/log/slurm/" >&2
exit 1
