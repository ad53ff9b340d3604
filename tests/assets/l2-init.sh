#!/bin/busybox sh
# L2 guest init of the tinyvmm lab. First thing: the Firecracker-compatible boot-timer write
# (byte 123 at MMIO 0xd0000000); /dev/mem is a node in the archive, so no mount is needed.
/bin/busybox devmem 0xd0000000 8 123
boot_timer=$?
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /run && mount -t tmpfs tmpfs /tmp
echo "LAB l2.init_uptime=$(cut -d' ' -f1 /proc/uptime) l2.boot_timer_write=$boot_timer"
failed=""
for m in $(cat /lib/modules/order); do
    insmod "/lib/modules/$m.ko" || failed="$failed,$m"
done
echo "LAB l2.modules=${failed:-ok}"
if [ -f /scenario.sh ]; then
    sh /scenario.sh </dev/null
    rc=$?
else
    rc=0
fi
echo
echo "LAB l2.end_uptime=$(cut -d' ' -f1 /proc/uptime) l2.status=$rc"
sync
poweroff -f
