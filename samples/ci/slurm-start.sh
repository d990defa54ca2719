#!/bin/bash
# Start a one-node Slurm cluster on this machine, for the Slurm tests of
# `make test` (see README, "Clusters"). Runs as root; needs neither systemd
# nor cgroups. Debian/Ubuntu packages:
#   apt-get install --no-install-recommends slurmctld slurmd slurm-client munge
#
#   SLURM_BASE=/tmp/slurm samples/ci/slurm-start.sh   # config, state, logs
#
# Starting it again while it runs does nothing. The node's CPUs and memory
# come from `slurmd -C`, so the node never drains for a hardware mismatch.
# Clients find the cluster through /etc/slurm/slurm.conf (a link to ours).
set -eu
export PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
base=${SLURM_BASE:?SLURM_BASE must name a directory for the cluster}
node=$(hostname -s)
conf=$base/etc/slurm.conf
started=$(date +%s%N)

# running PIDFILE COMMAND: the pid in PIDFILE is a live COMMAND (a killed
# daemon's pid may linger as a zombie, or be reused by another program).
running() {
    local pid state
    [ -s "$1" ] || return 1
    pid=$(cat "$1")
    state=$(ps -o stat=,comm= -p "$pid" 2>/dev/null) || return 1
    case $state in Z*) return 1 ;; esac
    [ "${state##* }" = "$2" ]
}

mkdir -p "$base/etc" "$base/log" "$base/run" "$base/spool/ctld" \
    "$base/spool/d"

# munge authenticates every Slurm message.
key=/etc/munge/munge.key
[ -s "$key" ] || mungekey --create --keyfile="$key"
chown munge:munge "$key"
chmod 0400 "$key"
install -d -o munge -g munge -m 0755 /run/munge
if ! running /run/munge/munged.pid munged; then
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    runuser -u munge -- /usr/sbin/munged
fi
# Wait for the socket itself: a client that finds none retries for seconds.
for _ in $(seq 50); do
    [ -S /run/munge/munge.socket.2 ] && break
    sleep 0.1
done
munge -n </dev/null | unmunge >/dev/null

hardware=$(slurmd -C | head -n 1 | sed 's/^NodeName=[^ ]* //')
cat >"$conf.tmp" <<CONF
# Written by samples/ci/slurm-start.sh: one node, root, no accounting.
ClusterName=guildci
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
InactiveLimit=0
KillWait=5
MinJobAge=300
StateSaveLocation=$base/spool/ctld
SlurmdSpoolDir=$base/spool/d
SlurmctldPidFile=$base/run/slurmctld.pid
SlurmdPidFile=$base/run/slurmd.pid
SlurmctldLogFile=$base/log/slurmctld.log
SlurmdLogFile=$base/log/slurmd.log
NodeName=$node NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
if cmp -s "$conf.tmp" "$conf"; then rm "$conf.tmp"; else mv "$conf.tmp" "$conf"; fi
mkdir -p /etc/slurm
ln -sfn "$conf" /etc/slurm/slurm.conf

# -c: a fresh controller forgets jobs of an earlier start.
running "$base/run/slurmctld.pid" slurmctld || slurmctld -f "$conf" -c
running "$base/run/slurmd.pid" slurmd || slurmd -f "$conf"

state=
for _ in $(seq 250); do
    state=$(sinfo -h -n "$node" -o %T 2>/dev/null || true)
    case $state in
        idle) break ;;
        down* | drain*) scontrol update NodeName="$node" State=RESUME \
            2>/dev/null || true ;;
    esac
    sleep 0.2
done
if [ "$state" != idle ]; then
    echo "slurm-start.sh: node $node is '${state:-unknown}', not idle" >&2
    tail -n 20 "$base/log/slurmctld.log" "$base/log/slurmd.log" >&2 || true
    exit 1
fi
echo "slurm-start.sh: node $node idle in" \
    "$(( ($(date +%s%N) - started) / 1000000 )) ms"
