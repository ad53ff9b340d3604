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
# virtio_mmio's parameters come from the kernel command line, as kmod's modprobe takes them
# (busybox insmod does not): with virtio_mmio.device= there (a NixOS-style guest, acpi=off),
# the build with CMDLINE_DEVICES is loaded instead of Debian's.
mmio=acpi
for m in $(cat /lib/modules/order); do
    ko="/lib/modules/$m.ko" args=""
    if [ "$m" = virtio_mmio ]; then
        args=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^virtio_mmio\.//p' | tr '\n' ' ')
        [ -n "$args" ] && ko=/lib/modules/virtio_mmio-cmdline.ko mmio=cmdline
    fi
    insmod "$ko" $args || failed="$failed,$m"
done
echo "LAB l2.modules=${failed:-ok} l2.virtio_mmio=$mmio"
# Like busybox init: Ctrl-Alt-Del becomes SIGINT to this init (not an immediate kernel
# reboot), and init answers it with a clean reboot. The scenario runs in the background so
# that `wait` returns as soon as the signal arrives.
cad=""
trap 'cad=1' INT
echo 0 > /proc/sys/kernel/ctrl-alt-del
rc=0
if [ -f /scenario.sh ]; then
    sh /scenario.sh </dev/null &
    wait $!
    rc=$?
fi
if [ -n "$cad" ]; then
    echo
    echo "LAB l2.ctrlaltdel=1 l2.cad_uptime=$(cut -d' ' -f1 /proc/uptime)"
    sync
    reboot -f
fi
echo
echo "LAB l2.end_uptime=$(cut -d' ' -f1 /proc/uptime) l2.status=$rc"
sync
poweroff -f
