#!/bin/sh
# Stage 2 of a tests/vm VM: PID 1 on the overlay (host root read-only over
# 9p + tmpfs upper).  Mounts the writable share (tag "share"), runs
# /mnt/share/cmd.sh with its output in /mnt/share/out.log, writes its exit
# code to /mnt/share/rc and the kernel log to /mnt/share/dmesg.log, then
# powers off.  dash as PID 1 has no job control: everything that could
# hang is under `timeout`.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mount -t tmpfs tmpfs /run
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null
echo "[guest] stage2 uptime=$(cut -d' ' -f1 /proc/uptime)s kernel=$(uname -r)"
ip link set lo up 2>/dev/null
mkdir -p /mnt/share
modprobe 9pnet_virtio 2>/dev/null
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 share /mnt/share; then
  if [ -x /mnt/share/cmd.sh ]; then
    timeout "${GUEST_TIMEOUT:-600}" /mnt/share/cmd.sh > /mnt/share/out.log 2>&1 < /dev/null
    rc=$?
    cat /mnt/share/out.log
    echo "[guest] cmd rc=$rc"
    echo $rc > /mnt/share/rc
  else
    echo "[guest] FATAL: /mnt/share/cmd.sh missing"
  fi
  dmesg > /mnt/share/dmesg.log 2>/dev/null
else
  echo "[guest] FATAL: cannot mount the result share"
fi
echo "[guest] done uptime=$(cut -d' ' -f1 /proc/uptime)s"
sync
/bin/busybox poweroff -f
