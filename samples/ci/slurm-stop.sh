#!/bin/bash
# Stop the cluster that samples/ci/slurm-start.sh started with the same
# SLURM_BASE: cancel its jobs, then end slurmd, slurmctld and munged.
set -u
export PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
base=${SLURM_BASE:?SLURM_BASE must name the cluster directory}

running() {  # PID COMMAND: a live (not zombie) COMMAND
    local state
    state=$(ps -o stat=,comm= -p "$1" 2>/dev/null) || return 1
    case $state in Z*) return 1 ;; esac
    [ "${state##* }" = "$2" ]
}

# Jobs first, so that no job outlives the daemons that watch it.
ctld=$base/run/slurmctld.pid
if [ -s "$ctld" ] && running "$(cat "$ctld")" slurmctld; then
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 100); do
            [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.1
        done
    fi
fi

stopping=
for daemon in "$base/run/slurmd.pid slurmd" \
        "$base/run/slurmctld.pid slurmctld" "/run/munge/munged.pid munged"; do
    set -- $daemon
    [ -s "$1" ] || continue
    pid=$(cat "$1")
    if running "$pid" "$2"; then
        kill -TERM "$pid" && stopping="$stopping $pid:$2"
    fi
done
for _ in $(seq 100); do
    left=
    for x in $stopping; do running "${x%%:*}" "${x#*:}" && left="$left $x"; done
    [ -z "$left" ] && break
    sleep 0.1
done
for x in $left; do
    echo "slurm-stop.sh: ${x#*:} ignored SIGTERM; killing it" >&2
    kill -KILL "${x%%:*}" 2>/dev/null || true
done
rm -f "$base/run/slurmd.pid" "$base/run/slurmctld.pid" /run/munge/munged.pid
echo "slurm-stop.sh: stopped"
