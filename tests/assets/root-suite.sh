#!/bin/sh
# Debian-side runner of the virtio-fs root scenario: /etc/rc.local of the cached Debian root
# (sysvinit runs it last in runlevel 2). Reports `LAB root.*=` lines on the console and powers
# the guest off. The rw share for the suites is tag `suite`, mounted on /mnt/suite.
exec >/dev/console 2>&1
echo "LAB root.init=$(cat /proc/1/comm)"
echo "LAB root.fstype=$(awk '$2 == "/" { t = $3 } END { print t }' /proc/mounts)"
echo "LAB root.uptime=$(cut -d' ' -f1 /proc/uptime)"
mkdir -p /mnt/suite
if mount -t virtiofs suite /mnt/suite; then
    if [ -x /mnt/suite/run-suites ]; then
        /mnt/suite/run-suites /mnt/suite
    fi
else
    echo "LAB root.suite_mount=failed"
fi
echo "LAB root.done=1"
poweroff -f
