#!/usr/bin/env bash
# Stop the test SLURM cluster started by up.sh: cancel jobs, then stop daemons by PID and remove the
# PID files (a stale one breaks a later start or package removal). Never pkill/killall.
set -u
command -v scancel >/dev/null && scancel --user="$(id -un)" 2>/dev/null
for pidfile in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
    if [ -f "$pidfile" ]; then
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null
        for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        rm -f "$pidfile"
    fi
done
echo "SLURM down"
